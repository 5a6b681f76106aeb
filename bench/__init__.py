"""hypervm benchmarks: ``python -m bench`` (``make bench``); figures in bench/results/."""
