"""After register(replace=True), DEQ options that no part of TorchDEQ's DEQ reads are named in one warning
(TorchDEQ ignores them silently, its issue #12); known options, a training script's own arguments and the
options other parts of TorchDEQ read are not; unregister() puts the constructors back."""
import argparse
import warnings

import pytest
import torchdeq
from torchdeq.utils import add_deq_args

from lmdeq.integrations import torchdeq as interop
from lmdeq.integrations.torchdeq_options import UnreadOptionWarning


def _unread(build):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with interop.registered(replace=True):
            build()
    return [str(w.message) for w in caught if issubclass(w.category, UnreadOptionWarning)]


def test_misspelt_and_bare_options_are_named():
    (msg,) = _unread(lambda: torchdeq.get_deq(f_max_itr=2, stop_mode="rel", f_solver="anderson"))
    assert "'f_max_itr' (did you mean 'f_max_iter'?)" in msg and "'stop_mode' (did you mean 'f_stop_mode'?)" in msg
    assert "f_solver" not in msg.split("read by")[0]


def test_a_dict_config_and_direct_construction():
    (msg,) = _unread(lambda: torchdeq.get_deq({"core": "indexing", "b_tolerance": 1e-4}))
    assert "'b_tolerance'" in msg and "DEQIndexing" in msg
    (msg,) = _unread(lambda: torchdeq.core.DEQSliced(f_max_iter=3, n_state=2))
    assert "'n_state' (did you mean 'n_states'?)" in msg


def test_known_options_and_script_arguments_are_quiet():
    parser = argparse.ArgumentParser()
    add_deq_args(parser)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(["--f_solver", "broyden", "--f_max_iter", "5", "--ift"])
    assert _unread(lambda: torchdeq.get_deq(args)) == []
    args.f_max_itr = 4   # a typo in the script's own namespace is still a DEQ option
    (msg,) = _unread(lambda: torchdeq.get_deq(args))
    assert "'f_max_itr'" in msg and "lr" not in msg and "epochs" not in msg


def test_unregister_restores_the_constructors():
    before = (torchdeq.core.DEQSliced.__init__, torchdeq.core.get_deq, torchdeq.get_deq)
    with interop.registered(replace=True):
        assert torchdeq.core.DEQSliced.__init__ is not before[0]
    assert (torchdeq.core.DEQSliced.__init__, torchdeq.core.get_deq, torchdeq.get_deq) == before
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torchdeq.get_deq(f_max_itr=2)   # TorchDEQ alone: silent, as before
    with interop.registered(replace=False):  # lmdeq_* names only: TorchDEQ's behaviour untouched
        assert torchdeq.core.DEQSliced.__init__ is before[0]


def test_an_unknown_solver_name_is_named():
    from lmdeq.errors import ConfigError

    with interop.registered(replace=True):
        with pytest.raises(ConfigError, match="'andersen' is not registered \\(did you mean 'anderson'\\?\\)"):
            torchdeq.get_deq(f_solver="andersen")
    with pytest.raises(AssertionError):   # TorchDEQ alone: its bare assert, as before
        torchdeq.get_deq(f_solver="andersen")
