"""Device efficiency choices (expert.efficiency): the out-of-memory retry with gradient checkpointing, and
that none of the choices changes what is trained or saved."""

import pytest
import torch

from expert.efficiency import Efficiency, checkpointing_on, is_out_of_memory, retry_with_checkpointing
from expert.train_expert import trainer_for_run
from expert.train_router import router_trainer_for_run
from protocol.errors import ParisError


def _state(t) -> dict[str, torch.Tensor]:
    return {f"{g}/{k}": v.clone() for g, ts in t.state_groups().items() for k, v in ts.items()}


def test_only_an_out_of_memory_error_under_auto_is_retried_and_only_once():
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert retry_with_checkpointing("auto", False, oom)
    assert not retry_with_checkpointing("auto", True, oom)  # already on: the batch is too big
    assert not retry_with_checkpointing("off", False, oom)
    assert not retry_with_checkpointing("on", False, oom)
    assert retry_with_checkpointing("auto", False, RuntimeError("MPS backend out of memory"))
    assert not retry_with_checkpointing("auto", False, RuntimeError("shape mismatch"))
    assert is_out_of_memory(oom) and not is_out_of_memory(ValueError("out of memory"))


def test_checkpointing_gives_the_same_step_as_without(tiny_run):
    spec, _ = tiny_run
    plain = trainer_for_run(spec, 0)
    ckpt = trainer_for_run(spec, 0, efficiency=Efficiency(grad_checkpointing="on"))
    assert checkpointing_on(ckpt.model) and not checkpointing_on(plain.model)
    plain.train(2)
    ckpt.train(2)
    a, b = _state(plain), _state(ckpt)
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), rtol=1e-5, atol=1e-6), k
    router = router_trainer_for_run(spec, cap=16, efficiency=Efficiency(grad_checkpointing="on"))
    assert checkpointing_on(router.model)  # the router's trunk


def test_a_step_out_of_memory_is_retried_on_the_same_batch_with_checkpointing(tiny_run, monkeypatch):
    spec, _ = tiny_run
    reference = trainer_for_run(spec, 0)
    reference.train(2)
    t = trainer_for_run(spec, 0)
    t.train(1)
    real = t._loss
    calls = {"n": 0}

    def fails_once(*args):
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return real(*args)

    monkeypatch.setattr(t, "_loss", fails_once)
    assert t.train_step() is not None
    assert calls["n"] == 2 and checkpointing_on(t.model) and t.step == 2
    a, b = _state(reference), _state(t)
    for k in a:  # the retried step drew the same batch: the same state as never having failed
        assert torch.allclose(a[k].float(), b[k].float(), rtol=1e-5, atol=1e-6), k


def test_out_of_memory_with_checkpointing_off_is_one_clear_error(tiny_run, monkeypatch):
    spec, _ = tiny_run
    t = trainer_for_run(spec, 0, efficiency=Efficiency(grad_checkpointing="off"))

    def oom(*args):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(t, "_loss", oom)
    with pytest.raises(ParisError, match="out of device memory at batch 8"):
        t.train_step()
    assert t.step == 0 and not checkpointing_on(t.model)


def test_compile_keeps_parameter_names(tiny_run):
    spec, _ = tiny_run
    plain = trainer_for_run(spec, 0)
    compiled = trainer_for_run(spec, 0, efficiency=Efficiency(compile=True))
    assert compiled.model._compiled_call_impl is not None  # the forward goes through torch.compile
    assert list(_state(plain)) == list(_state(compiled))  # checkpoints are interchangeable
