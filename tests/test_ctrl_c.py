"""Ctrl-C stays with the command while Ray Train's ``fit`` runs in the driver (the source model, the
warm-up, the oracle reference, and every round of ``orchestrator.run``).

Ray Train V2's ``fit`` installs its own SIGINT handler in the main thread (a graceful abort of its run)
and never removes it. Seen: once the sweep's driver had trained the source model, a Ctrl-C during the
trials went to that handler and was lost, and the sweep ran on to the end and exited 0. No Ray here:
a stand-in ``fit`` installs a handler the same way.
"""

import os
import signal
import time

import pytest

from trainers.train_loop import _ctrl_c_stays_with_the_command


def fit_like_ray_train(ctrl_c: bool) -> None:
    signal.signal(signal.SIGINT, lambda signum, frame: None)  # swallows Ctrl-C, as Ray Train's does
    if ctrl_c:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # the handler runs in this (main) thread


@pytest.fixture
def command_handler():
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # a command's own, as at start-up
    yield signal.default_int_handler
    signal.signal(signal.SIGINT, before)


def test_the_commands_handler_is_back_after_fit(command_handler):
    with _ctrl_c_stays_with_the_command():
        fit_like_ray_train(ctrl_c=False)
    assert signal.getsignal(signal.SIGINT) is command_handler
    with pytest.raises(KeyboardInterrupt):  # a later Ctrl-C reaches the command
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)


def test_a_ctrl_c_during_fit_is_raised_once_fit_has_stopped(command_handler):
    with pytest.raises(KeyboardInterrupt), _ctrl_c_stays_with_the_command():
        fit_like_ray_train(ctrl_c=True)
    assert signal.getsignal(signal.SIGINT) is command_handler
    assert signal.set_wakeup_fd(-1) == -1  # the wake-up fd is given back too
