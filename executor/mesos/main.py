"""``hypervm-executor``: set up logging in the sandbox, read the agent's environment, run the
executor's loop (:class:`executor.mesos.executor.ExecutorCore`) with our pymesos driver."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path

from executor.mesos.callbacks import MesosCallbacks
from executor.mesos.driver import make_driver, settings_from_env
from executor.mesos.executor import ExecutorCore
from executor.mesos.kill import kill_limits_from_env
from executor.mesos.logs import rotation_from_env, setup_executor_logging
from executor.mesos.runtime import load_runtime
from hypervm.config import mesos_policy_from_env
from hypervm.errors import HyperVMError
from hypervm.settings import load_config_file

log = logging.getLogger("executor.mesos.executor")


def main(argv: list[str] | None = None) -> int:
    env = os.environ
    sandbox = Path(env.get("MESOS_SANDBOX") or env.get("MESOS_DIRECTORY") or ".")
    config_error = None
    try:
        load_config_file(env)  # /etc/hypervm/config.toml under the environment
    except HyperVMError as e:
        config_error = e
    try:
        setup_executor_logging(sandbox, logging.DEBUG if env.get("HYPERVM_DEBUG") else logging.INFO,
                               rotation_from_env(env))
    except (OSError, HyperVMError) as e:
        logging.basicConfig(level=logging.INFO)
        log.warning("cannot log into the sandbox: %s", e)
    try:
        if config_error is not None:
            raise config_error
        settings = settings_from_env(env)
        runtime = load_runtime(env)
        rotation = rotation_from_env(env)
        policy = mesos_policy_from_env(env)
        kill_limits = kill_limits_from_env(env)
    except HyperVMError as e:
        log.error("hypervm-executor cannot start: %s", e)
        print(f"hypervm-executor: error: {e}", file=sys.stderr)
        return 1
    core = ExecutorCore(settings, runtime, rotation, policy, kill_limits)
    if env.get("HYPERVM_EXECUTOR_ACK_TIMEOUT", "").replace(".", "", 1).isdigit():
        core.ack_timeout_s = float(env["HYPERVM_EXECUTOR_ACK_TIMEOUT"])

    def failsafe() -> None:
        log.error("fail-safe: the executor did not finish within the grace period")
        core.emergency_stop()
        logging.shutdown()
        os._exit(1)

    driver = make_driver(MesosCallbacks(core), settings, failsafe)
    core.driver = driver
    signal.signal(signal.SIGTERM, core.on_sigterm)
    log.info("hypervm-executor %s for framework %s, agent http://%s%s", settings.executor_id,
             settings.framework_id, settings.agent_endpoint, settings.api_path)
    driver.start()
    try:
        core.run()
    except BaseException:
        log.exception("the executor loop died: destroying every pod")
        core.emergency_stop()
        core.exit_code = 1
    driver.stop()
    stopper = threading.Thread(target=driver.join, daemon=True)
    stopper.start()
    stopper.join(5)
    log.info("exiting with status %d", core.exit_code)
    logging.shutdown()
    return core.exit_code


if __name__ == "__main__":
    sys.exit(main())
