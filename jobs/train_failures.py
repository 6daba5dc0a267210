"""Ray Train retries a failed worker group up to ``max_failures`` times; that is right for a lost
node or a killed worker, and wrong for a project error (core.errors): a corrupt image, a label
store that cannot be read or a checkpoint that does not fit fails the same way on every attempt,
so retrying it only triples the time and the log. ``ProjectErrorTrainer`` is a TorchTrainer whose
failure policy raises at once when any worker failed with a project error.

Ray Train 2.x offers no public hook for the policy: the trainer hands its own to the controller
(``_initialize_and_run_controller``'s ``failure_policy``); tests/test_faults_errors.py checks the
policy's decisions and that ``fit`` still passes the policy there, so a Ray upgrade that moves it
fails that test.
"""

from __future__ import annotations

from ray.train.torch import TorchTrainer
from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy
from ray.train.v2._internal.execution.failure_handling.failure_policy import FailureDecision
from ray.train.v2.api.exceptions import TrainingFailedError

from core.errors import SelfTrainError


class ProjectErrorsRaise(DefaultFailurePolicy):
    """Ray Train's default policy, except that a worker group failed by a project error is not
    retried."""

    def make_decision(self, training_failed_error: TrainingFailedError) -> FailureDecision:
        failures = getattr(training_failed_error, "worker_failures", {}) or {}
        if any(isinstance(error, SelfTrainError) for error in failures.values()):
            return FailureDecision.RAISE
        return super().make_decision(training_failed_error)


class ProjectErrorTrainer(TorchTrainer):
    """A TorchTrainer with the `ProjectErrorsRaise` failure policy."""

    def _initialize_and_run_controller(self, **controller_init_kwargs):
        controller_init_kwargs["failure_policy"] = ProjectErrorsRaise(
            self.run_config.failure_config
        )
        return super()._initialize_and_run_controller(**controller_init_kwargs)
