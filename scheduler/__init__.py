"""hypervm-scheduler: the sample multi-tenant CaaS framework."""
