# over 400 lines: its scenarios share the tiny set-up helpers (test_ledger imports them) and a module-scoped resume run
"""The one training loop (rethink.loop) with the real torchvision engine on a tiny synthetic set:
resume after SIGKILL and SIGTERM, branch points, corrupt checkpoints, NaN, DDP with SyncBN."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import switches
import torch

from conftest import PY, ROOT, load_yaml
from rethink import checkpoint, config, data, grid, hooks, loop, plan, sampling, segment
from rethink.job_specs import JobSpecs
from rethink.lock import SegmentLock
from rethink.paths import Paths
from rethink.schedule import Schedule

TRAIN = str(ROOT / "workflow_scripts" / "train.py")


# ------------------------------------------------------------------------------ set-up helpers
def tiny_specs(tmp: Path, recipe: dict | None = None, schedules: dict | None = None, **top) -> JobSpecs:
    """configs/tiny.yaml shrunk to seconds: 8 train images of 64-80 px, R18 GN, 2x = 8 / 3x = 12
    iterations (LR drops 4 and 2 iterations before the end), checkpoints every 2; data prepared."""
    cfg = load_yaml(ROOT / "configs" / "tiny.yaml")
    del cfg["experiments"]["seeds_tiny"]  # one seed
    cfg["workdir"], cfg["results"] = str(tmp / "work"), str(tmp / "results")
    cfg["axes"]["init"] = ["random"]
    if schedules:
        cfg["axes"]["schedule"] = schedules
    cfg["datasets"]["synthetic"].update(train_size=8, val_size=4, image_size=[64, 80], categories=2, max_objects=2)
    cfg["recipe"].update(
        iters_per_x=4,
        lr_drops_from_end=[4, 2],
        warmup_iters=2,
        min_size_train=[64],
        max_size_train=96,
        min_size_test=64,
        max_size_test=96,
        rpn_pre_nms_train=200,
        rpn_post_nms_train=100,
        rpn_pre_nms_test=100,
        rpn_post_nms_test=50,
        roi_batch_per_image=32,
        detections_per_image=20,
        checkpoint_period=2,
        **(recipe or {}),
    )
    cfg.update(eval_period=100, max_segment_iters=100, **top)
    cfg = config.validate(cfg, "tiny-test")
    p = JobSpecs(Paths(cfg, plan.Plan(grid.build(cfg, "tiny-test"))))
    if not Path(p.paths.dataset("synthetic")).exists():
        data.prepare(p.data_spec("synthetic"))
    return p


def first_segment(p: JobSpecs, line: str | None = None):
    segs = sorted(p.plan.segments.values(), key=lambda s: (s.line != (line or s.line), s.start, s.line))
    return segs[0]


def spec_of(p: JobSpecs, seg, **extra) -> dict:
    return {**p.train_spec(seg), "log_period": 1, "deterministic": True, **extra}


def run_cli(spec: dict, timeout: int = 300, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [PY, TRAIN, "--spec", json.dumps(spec)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def wait_for(pred, proc: subprocess.Popen, timeout: float = 120.0, what: str = "") -> None:
    t0 = time.time()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"process ended ({proc.returncode}) before {what}:\n{proc.stdout.read()[-3000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def history(path: Path) -> dict[int, dict]:
    """iteration -> the last record of it (a resumed run re-trains iterations after its checkpoint)."""
    out = {}
    for line in Path(path).read_text().splitlines():
        rec = json.loads(line)
        out[rec["iteration"]] = rec
    return out


def weights(path) -> dict:
    return checkpoint.load(path)["model"]


def assert_same_weights(a: dict, b: dict, atol=1e-6) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
    assert worst <= atol, f"weights differ by {worst}"


# ------------------------------------------------------------------------------ pure helpers
def test_batch_indices_cover_epochs_and_split_across_ranks():
    n, batch = 10, 4
    seq = [i for it in range(5) for i in sampling.batch_indices(7, it, batch, n)]
    assert sorted(seq[:10]) == list(range(10)) and sorted(seq[10:20]) == list(range(10))  # epochs without replacement
    assert seq[:10] != seq[10:20]  # reshuffled each epoch
    for it in range(5):
        joint = sampling.batch_indices(7, it, batch, n)
        assert sampling.batch_indices(7, it, batch, n, 0, 2) + sampling.batch_indices(7, it, batch, n, 1, 2) == joint
    assert sampling.batch_indices(8, 0, batch, n) != sampling.batch_indices(7, 0, batch, n)
    with pytest.raises(ValueError, match="not divisible"):
        sampling.batch_indices(0, 0, 3, n, 0, 2)


def test_grouped_batches_hold_one_aspect_and_depend_only_on_seed_and_iteration():
    groups = list(np.random.default_rng(3).permutation([0] * 14 + [1] * 7))
    gb = sampling.GroupedBatches(5, 4, groups)
    assert gb.per_epoch == 14 // 4 + 7 // 4 + (14 % 4 + 7 % 4) // 4 == 5
    epochs = [[gb.indices(e * 5 + k) for k in range(5)] for e in range(30)]
    for batches in epochs:
        flat = [i for b in batches for i in b]
        assert len(flat) == len(set(flat)) == 20  # no image twice in an epoch, < one batch left out
        mixed = [b for b in batches if len({groups[i] for i in b}) > 1]
        assert len(mixed) <= 1  # only the leftovers of the two groups share a batch
    assert epochs[0] != epochs[1]
    assert {i for batches in epochs for b in batches for i in b} == set(range(21))  # everything is drawn
    # a batch depends only on (seed, iteration): a fresh sampler, asked out of order, agrees
    again = sampling.GroupedBatches(5, 4, groups)
    assert [again.indices(i) for i in (37, 3, 90)] == [epochs[7][2], epochs[0][3], epochs[18][0]]
    assert sampling.GroupedBatches(6, 4, groups).indices(0) != gb.indices(0) or sampling.GroupedBatches(
        6, 4, groups
    ).indices(1) != gb.indices(1)
    for i in range(10):  # two processes take the halves of the same batch
        assert gb.indices(i, 0, 2) + gb.indices(i, 1, 2) == gb.indices(i)
    assert sampling.aspect_groups([(640, 480), (480, 640), (500, 500)]) == [0, 1, 1]
    with pytest.raises(ValueError, match="do not fill one batch"):
        sampling.GroupedBatches(0, 8, [0, 1, 0])
    with pytest.raises(ValueError, match="not divisible"):
        gb.indices(0, 0, 3)


def test_checkpoint_truncated_is_a_clear_error_and_skipped(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rdir = tmp_path / "resume"

    def state(it):
        return {
            "format": checkpoint.FORMAT,
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "iteration": it,
            "counters": {"images": it, "instances": it, "pixels": it},
            "wall_seconds": 1.0,
            "device_seconds": 1.0,
            "gpus": 0,
            "run_id": "r",
            "family": "f",
            "line": "trunk",
            "engine": "x",
            "rng": [checkpoint.rng_state()],
        }

    for it in (2, 4, 6):
        checkpoint.save(checkpoint.resume_path(rdir, it), state(it))
    checkpoint.prune(rdir, keep=2)
    assert [i for i, _ in checkpoint.resume_candidates(rdir)] == [6, 4]
    bad = checkpoint.resume_path(rdir, 6)
    blob = bad.read_bytes()
    bad.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(checkpoint.CheckpointError, match=str(bad)):
        checkpoint.load(bad)
    logs = []
    got = checkpoint.latest_valid(rdir, 0, 10, log=logs.append)
    assert got["iteration"] == 4
    assert any(str(bad) in m and "skipping" in m for m in logs)
    # outside the segment: ignored
    assert checkpoint.latest_valid(rdir, 5, 10, log=logs.append) is None
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="garbage.pth"):
        checkpoint.load(tmp_path / "garbage.pth")


def test_checkpoint_checksum_finds_a_damaged_tensor_and_says_what_to_do(tmp_path):
    """torch.load reads a flipped bit in a tensor without complaint; the checksum does not."""
    model = torch.nn.Linear(64, 64)
    state = {
        "format": checkpoint.FORMAT,
        "model": model.state_dict(),
        "optimizer": {},
        "iteration": 2,
        "counters": {"images": 2, "instances": 2, "pixels": 2},
        "wall_seconds": 1.0,
        "device_seconds": 1.0,
        "gpus": 0,
        "run_id": "r",
        "family": "f",
        "line": "trunk",
        "engine": "x",
        "rng": [checkpoint.rng_state()],
    }
    good = tmp_path / "good.pth"
    checkpoint.save(good, state)
    assert checkpoint.load(good)["checksum"] == checkpoint.digest(state)
    assert "checksum" not in checkpoint.metadata(checkpoint.load(good))
    raw = bytearray(good.read_bytes())
    at = raw.find(model.weight.detach().numpy().tobytes()[:32])
    assert at > 0
    raw[at + 5] ^= 0x04
    bad = tmp_path / "bad.pth"
    bad.write_bytes(bytes(raw))
    assert not torch.equal(torch.load(bad, weights_only=True)["model"]["weight"], model.weight)  # read "fine"
    with pytest.raises(checkpoint.CheckpointError, match=r"bad.pth: damaged: .*checksum.*delete it and run snakemake"):
        checkpoint.load(bad)
    # a resume checkpoint that is damaged is skipped for the previous good one
    rdir = tmp_path / "resume"
    checkpoint.save(checkpoint.resume_path(rdir, 2), state)
    checkpoint.resume_path(rdir, 4).write_bytes(bytes(raw))
    logs = []
    assert checkpoint.latest_valid(rdir, 0, 10, log=logs.append)["iteration"] == 2
    assert any("damaged" in m for m in logs), logs
    # a checkpoint written before checksums existed still loads (finished results stay usable)
    old = tmp_path / "old.pth"
    torch.save(state, old)
    assert checkpoint.load(old)["iteration"] == 2


def test_a_second_trainer_of_a_segment_waits_for_the_first_then_takes_over(tmp_path):
    """Two trainers of one segment (an orphan of a killed Snakemake and its resubmitted job) never
    run together: the second waits while the first lives (the lock dies with its process, kill -9
    included), then resumes from the first's checkpoint; one started after the segment was finished
    takes the output and trains nothing."""
    p = tiny_specs(tmp_path)
    spec = spec_of(p, first_segment(p), end=4, history=str(tmp_path / "h.jsonl"))
    hist, rdir = Path(spec["history"]), spec["resume_dir"]
    # 10 s after each iteration: after its checkpoint at iteration 2 the first trainer still holds the
    # segment for 20 s, time for the second to start on a loaded machine; it is killed below
    slow = {**os.environ, **switches.environment(sleep=10)}
    first = run_cli(spec, env=slow)
    try:
        wait_for(lambda: checkpoint.resume_candidates(rdir), first, timeout=300, what="the first's checkpoint")
        second = run_cli(spec)
        told = ""
        while "waiting for it" not in told and second.poll() is None:
            told += second.stdout.readline()
        assert "another trainer holds this segment" in told and f"pid {first.pid}" in told, told[-2000:]
        assert first.poll() is None, "the first trainer must go on"
    finally:
        first.kill()
        first.wait(30)
    assert first.returncode == -signal.SIGKILL
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out[-3000:]
    assert "resuming from" in out and "at iteration 2" in out, out[-3000:]
    trained = [json.loads(ln)["iteration"] for ln in hist.read_text().splitlines()]
    assert trained[-2:] == [2, 3] and trained.count(2) <= 2, trained  # the second trained 2 and 3 only
    assert Path(spec["output"]).exists() and not Path(rdir).exists()
    assert "done:" in out and "written by another trainer" not in out, out[-3000:]  # it trained to the end


def test_a_trainer_that_waited_for_one_that_finished_takes_its_output(tmp_path):
    """The first trainer of a segment finishes while a second waits for its lock: the second takes
    the valid output and trains nothing (its resume folder, made again by the lock, goes)."""
    p = tiny_specs(tmp_path)
    spec = spec_of(p, first_segment(p), end=2, deterministic=False)
    segment.train_segment(spec)
    before = checkpoint.load(spec["output"])
    holder = SegmentLock(spec["resume_dir"], "the first trainer").__enter__()
    got: dict = {}
    second = threading.Thread(target=lambda: got.update(segment.train_segment(spec)))
    second.start()
    time.sleep(2)
    assert second.is_alive() and not got, "the second trainer must wait while the first holds the lock"
    holder.__exit__()
    second.join(120)
    assert got.get("taken_over") and got["iteration"] == 2 and got["history"] == [], got
    assert checkpoint.load(spec["output"])["counters"] == before["counters"]
    assert not Path(spec["resume_dir"]).exists()


def test_a_slurm_job_requeued_after_it_finished_takes_its_output(tmp_path, monkeypatch):
    """SLURM requeued a training job just as its command ended (a fault of the campaign test, 0.17 s
    after): the same job id starts again with SLURM_RESTART_COUNT 1, finds the valid output it wrote,
    and trains nothing instead of the whole segment. A first start still trains."""
    p = tiny_specs(tmp_path)
    spec = spec_of(p, first_segment(p), end=2, deterministic=False)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    segment.train_segment(spec)
    before = checkpoint.load(spec["output"])
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    got = segment.train_segment(spec)
    assert got.get("taken_over") and got["iteration"] == 2 and got["history"] == [], got
    assert checkpoint.load(spec["output"])["counters"] == before["counters"]


# ------------------------------------------------------------------------------ resume: SIGKILL, SIGTERM
@pytest.fixture(scope="module")
def resume_scenario(module_tmp):
    """One segment 0 -> 6 trained (a) straight through in this process, and (b) as a subprocess killed
    with SIGKILL after its first resume checkpoint, resumed in a subprocess stopped by SIGTERM,
    then resumed to the end."""
    tmp = module_tmp("resume")
    p = tiny_specs(tmp)
    seg = first_segment(p)
    base = spec_of(p, seg, end=6)
    straight = {
        **base,
        "output": str(tmp / "straight.pth"),
        "resume_dir": str(tmp / "straight_resume"),
        "history": str(tmp / "straight.jsonl"),
    }
    segment.train_segment(straight)

    hist = tmp / "stopped.jsonl"
    spec = {**base, "output": str(tmp / "stopped.pth"), "resume_dir": str(tmp / "resume"), "history": str(hist)}
    slow = {**os.environ, **switches.environment(sleep=0.4)}  # a slow iteration in the subprocess
    rdir = Path(spec["resume_dir"])
    out = {"tmp": tmp, "straight": straight, "spec": spec}
    proc = run_cli(spec, env=slow)
    wait_for(lambda: checkpoint.resume_candidates(rdir), proc, what="the first resume checkpoint")
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    out["kill_rc"] = proc.returncode
    out["after_kill"] = [i for i, _ in checkpoint.resume_candidates(rdir)]

    proc = run_cli(spec, env=slow)
    n_before = len(hist.read_text().splitlines())
    wait_for(lambda: len(hist.read_text().splitlines()) > n_before, proc, what="an iteration after resuming")
    proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=120)
    out["term_rc"], out["term_log"] = proc.returncode, log
    out["after_term"] = checkpoint.latest_valid(rdir, 0, 6)
    out["output_after_term"] = Path(spec["output"]).exists()

    out["summary"] = segment.train_segment(spec)
    return out


def test_sigkill_then_resume_matches_straight_run(resume_scenario):
    s = resume_scenario
    assert s["kill_rc"] == -signal.SIGKILL and s["after_kill"], "killed run left no resume checkpoint"
    straight, resumed = s["straight"], s["spec"]
    assert Path(resumed["output"]).exists() and not Path(resumed["resume_dir"]).exists()
    a, b = checkpoint.load(straight["output"]), checkpoint.load(resumed["output"])
    assert a["iteration"] == b["iteration"] == 6
    assert a["counters"] == b["counters"] and a["counters"]["images"] == 6 * 2
    ha, hb = history(straight["history"]), history(resumed["history"])
    assert sorted(ha) == sorted(hb) == list(range(6))
    sched = Schedule(**straight["schedule"])
    assert [ha[i]["lr"] for i in range(6)] == [hb[i]["lr"] for i in range(6)] == [sched.lr(i) for i in range(6)]
    assert [ha[i]["loss"] for i in range(6)] == pytest.approx([hb[i]["loss"] for i in range(6)], rel=1e-5)
    assert_same_weights(a["model"], b["model"], atol=1e-5)
    assert b["wall_seconds"] > 0 and b["device_seconds"] > 0


def test_sigterm_writes_resume_checkpoint_and_exits_nonzero(resume_scenario):
    s = resume_scenario
    assert s["term_rc"] == 128 + signal.SIGTERM, s["term_log"][-2000:]
    assert "stopped by SIGTERM" in s["term_log"]
    ck = s["after_term"]
    assert ck is not None and 0 < ck["iteration"] <= 6 and ck["iteration"] > min(s["after_kill"])
    assert not s["output_after_term"]  # a stopped segment has no output
    assert s["summary"]["iteration"] == 6


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGINT], ids=["SIGUSR1", "SIGINT"])
def test_stop_signal_in_process_stops_with_its_exit_code_and_resumes(tmp_path, sig):
    """SIGUSR1 (SLURM's warning signal) and SIGINT (Ctrl-C) stop like SIGTERM: a resume checkpoint, 128 + signal."""
    import threading

    p = tiny_specs(tmp_path)
    spec = spec_of(p, first_segment(p), end=4, deterministic=False, history=str(tmp_path / "h.jsonl"))
    hist = Path(spec["history"])

    def send_when_training():
        while not (hist.exists() and hist.read_text()):
            time.sleep(0.02)
        os.kill(os.getpid(), sig)

    threading.Thread(target=send_when_training, daemon=True).start()
    with pytest.raises(loop.Preempted) as e:
        segment.train_segment(spec, [switches.SleepPerIteration(0.3)])
    assert e.value.exit_code == 128 + sig
    ck = checkpoint.latest_valid(spec["resume_dir"], 0, 4)
    assert ck is not None and 1 <= ck["iteration"] < 4
    assert signal.getsignal(sig) is not None  # the loop put the old handler back
    summary = segment.train_segment(spec)
    assert summary["history"][0]["iteration"] == ck["iteration"] and summary["iteration"] == 4


def test_a_stop_signal_in_the_last_step_finishes_the_segment(tmp_path, capsys):
    """A pre-emption or walltime signal that arrives during the segment's last step: the output is
    written and the segment ends done. (A resume checkpoint at the segment's end is outside
    [start, end): the next attempt resumed a checkpoint period earlier; the whole grid's rehearsal
    found it, 4,000 iterations trained again.)"""
    p = tiny_specs(tmp_path)
    spec = spec_of(p, first_segment(p), end=4)
    summary = segment.train_segment(spec, [StopAfter(4)])
    assert summary["iteration"] == 4 and checkpoint.load(spec["output"])["iteration"] == 4
    assert not Path(spec["resume_dir"]).exists()
    assert "SIGTERM in the segment's last step: finishing it" in capsys.readouterr().out


# ------------------------------------------------------------------------------ branch: trunk + tail
def test_trunk_then_tail_gives_the_standalone_lr_schedule(tmp_path):
    p = tiny_specs(tmp_path)  # 2x = 8 (first drop at 4), 3x = 12 (first drop at 8): trunk 0 -> 8
    run2x = next(r for r in p.plan.grid.runs.values() if r.schedule_name == "2x")
    segs = p.plan.segments_of_run(run2x.run_id)
    assert [(s.line, s.start, s.end) for s in segs] == [("trunk", 0, 4), ("2x", 4, 8)]
    lrs = {}
    for seg in segs:
        summary = segment.train_segment(spec_of(p, seg, deterministic=False))
        lrs.update({h["iteration"]: h["lr"] for h in summary["history"]})
    standalone = Schedule.from_recipe(run2x.recipe, run2x.iterations)
    assert [lrs[i] for i in range(8)] == [standalone.lr(i) for i in range(8)]
    assert lrs[3] != lrs[4]  # the tail really starts at its first drop
    tail = checkpoint.load(p.paths.checkpoint(run2x.family, "2x", 8))
    assert tail["iteration"] == 8 and tail["counters"]["images"] == 8 * 2
    # a start checkpoint at the wrong iteration is refused, naming the file
    bad = {**spec_of(p, segs[1]), "start": 5, "resume_dir": str(tmp_path / "none")}
    with pytest.raises(checkpoint.CheckpointError, match="holds iteration 4"):
        segment.train_segment(bad)


# ------------------------------------------------------------------------------ NaN, then a corrupt resume checkpoint
def test_nan_stops_the_run_then_corrupt_resume_checkpoint_is_skipped(tmp_path, capsys):
    """A non-finite loss: the segment's output is a checkpoint marked diverged (no weights), the
    segment after it passes the mark on without training, an evaluation records diverged: true;
    a job asked again refuses to train; deleted (output and marker), it resumes from its newest
    valid resume checkpoint, skipping a truncated one."""
    p = tiny_specs(tmp_path)
    seg = first_segment(p)
    spec = spec_of(p, seg, end=6, deterministic=False)
    capsys.readouterr()
    summary = segment.train_segment(spec, [switches.NanAt(5)])
    err = capsys.readouterr().err
    assert summary["diverged"]["iteration"] == 5 and summary["iteration"] == 6
    assert err.startswith("diverged:") and spec["run"]["run_id"] in err and f"{seg.family}/{seg.line}" in err
    assert "iteration 5" in err and "marked diverged" in err and spec["output"] in err
    out = checkpoint.load(spec["output"])
    assert out["diverged"]["iteration"] == 5 and out["model"] == {} and out["iteration"] == 6
    assert (out["family"], out["line"], out["identity"]) == (seg.family, seg.line, spec.get("identity"))
    rdir = Path(spec["resume_dir"])
    assert [i for i, _ in checkpoint.resume_candidates(rdir)] == [4, 2]
    marker = rdir / loop.DIVERGED_MARKER
    assert json.loads(marker.read_text())["iteration"] == 5
    # the next segment starts from it: marked diverged too, in seconds, nothing trained
    nxt = {
        **spec_of(p, seg, end=6, deterministic=False),
        "start": 6,
        "end": 8,
        "start_checkpoint": spec["output"],
        "resume_dir": str(tmp_path / "next"),
        "output": str(tmp_path / "next.pth"),
    }
    later = segment.train_segment(nxt)
    assert later["diverged"]["inherited_from"] == spec["output"] and later["diverged"]["iteration"] == 5
    assert checkpoint.load(nxt["output"])["diverged"]["iteration"] == 5
    # its evaluation: diverged, no stats, no model built
    from rethink import evaluate, metrics

    ev = {
        "engine": spec["engine"],
        "run": spec["run"],
        "family": seg.family,
        "line": seg.line,
        "iteration": 6,
        "lr": 0.01,
        "checkpoint": spec["output"],
        "dataset": spec["dataset"],
        "output": str(tmp_path / "m.json"),
    }
    rec = evaluate.evaluate(ev, log=open(os.devnull, "w"))
    assert rec["diverged"] is True and rec["stats"] == {} and metrics.read(ev["output"])["diverged"] is True
    # asked again (its output deleted): refuses to train, marks the output again
    Path(spec["output"]).unlink()
    again = segment.train_segment(spec)
    assert "diverged before" in capsys.readouterr().err and again["diverged"]["iteration"] == 5
    assert [i for i, _ in checkpoint.resume_candidates(rdir)] == [4, 2]  # nothing trained
    Path(spec["output"]).unlink()
    marker.unlink()  # the user's way to try again
    # the newest resume checkpoint is truncated: reported, and training resumes from the previous one
    bad = checkpoint.resume_path(rdir, 4)
    bad.write_bytes(bad.read_bytes()[:1000])
    capsys.readouterr()
    summary = segment.train_segment(spec)
    out = capsys.readouterr().out
    assert str(bad) in out and "skipping" in out
    assert "resuming from" in out and "iter_0000002.pth" in out
    assert [h["iteration"] for h in summary["history"]] == [2, 3, 4, 5]
    assert checkpoint.load(spec["output"])["iteration"] == 6 and "diverged" not in checkpoint.load(spec["output"])


def test_nan_via_cli_exits_0_with_output_marked_diverged(tmp_path):
    """Exit status 0 (Snakemake keeps the output and goes on), the message last on stderr."""
    p = tiny_specs(tmp_path)
    seg = first_segment(p)
    spec = spec_of(p, seg, end=2, deterministic=False)
    proc = subprocess.run(
        [PY, TRAIN, "--spec", json.dumps(spec)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **switches.environment(nan_at=1)},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("diverged:") and spec["run"]["run_id"] in last and "iteration 1" in last
    assert checkpoint.load(spec["output"])["diverged"]["iteration"] == 1


def test_the_hooks_extension_point_loads_a_file_by_path_and_names_a_bad_value(tmp_path, monkeypatch):
    """$RETHINK_HOOKS=<file>:<function> adds that function's hooks (tests/switches.py here); unset,
    none; a value that does not load is an error naming the variable, the value and the problem."""
    spec = {"run": {"run_id": "r"}}
    assert hooks.from_extension(spec, env={}) == []
    monkeypatch.setenv("RETHINK_NAN_AT", "3")
    got = hooks.from_extension(spec, env=switches.environment(nan_at=3))
    assert [type(h).__name__ for h in got] == ["NanAt"] and got[0].iteration == 3
    bad = tmp_path / "bad.py"
    bad.write_text("def hooks(spec):\n    return [object()]\n")
    for value, says in [
        ("no-function", "expected <path/to/file.py>:<function>"),
        (f"{tmp_path / 'gone.py'}:f", "is not a file"),
        (f"{bad}:missing", "has no function missing"),
        (f"{bad}:hooks", "returned object, not rethink.hooks.HookBase"),
    ]:
        with pytest.raises(ValueError) as e:
            hooks.from_extension(spec, env={"RETHINK_HOOKS": value})
        assert str(e.value).startswith(f"$RETHINK_HOOKS: value {value!r}: ") and says in str(e.value), e.value


# ------------------------------------------------------------------------------ DDP
def _syncbn_worker(rank: int, world: int, init_file: str, x: torch.Tensor, g: torch.Tensor, q):
    import torch.distributed as dist

    from rethink.engines.torchvision_norms import NaiveSyncBatchNorm

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    bn = NaiveSyncBatchNorm(x.shape[1])
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    per = x.shape[0] // world
    xs = x[rank * per : (rank + 1) * per].clone().requires_grad_(True)
    (bn(xs) * g[rank * per : (rank + 1) * per]).sum().backward()
    wg, bg = bn.weight.grad.clone(), bn.bias.grad.clone()
    dist.all_reduce(wg)
    dist.all_reduce(bg)
    q.put((rank, *(t.numpy() for t in (xs.grad, wg, bg, bn.running_mean, bn.running_var))))
    dist.destroy_process_group()


def test_naive_sync_bn_gradients_equal_bn_on_the_joint_batch(tmp_path):
    import torch.multiprocessing as mp

    torch.manual_seed(1)
    x = torch.randn(4, 8, 5, 6) * 2 + 0.5
    g = torch.randn(4, 8, 5, 6)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_syncbn_worker, args=(r, 2, str(tmp_path / "pg"), x, g, q)) for r in range(2)]
    for pr in procs:
        pr.start()
    res = sorted([q.get(timeout=120) for _ in procs], key=lambda t: t[0])
    for pr in procs:
        pr.join(60)
        assert pr.exitcode == 0
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(8)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    xj = x.clone().requires_grad_(True)
    (bn(xj) * g).sum().backward()
    res = [[torch.from_numpy(a) if not isinstance(a, int) else a for a in r] for r in res]
    xgrad = torch.cat([r[1] for r in res])
    assert (xgrad - xj.grad).abs().max() < 4e-6
    assert (res[0][2] - bn.weight.grad).abs().max() < 4e-6
    assert (res[0][3] - bn.bias.grad).abs().max() < 4e-6
    assert xj.grad.abs().max() > 1e-2  # not trivially equal
    assert torch.allclose(res[0][4], bn.running_mean, atol=1e-6) and torch.allclose(
        res[0][5], bn.running_var, atol=1e-5
    )


def test_ddp_two_processes_gloo_syncbn_via_torchrun(tmp_path):
    p = tiny_specs(tmp_path)
    spec = spec_of(p, first_segment(p), end=2, deterministic=False)
    spec["run"] = {**spec["run"], "norm": "SyncBN"}
    spec["history"] = str(tmp_path / "ddp.jsonl")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", TRAIN, "--spec", json.dumps(spec)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ck = checkpoint.load(spec["output"])
    assert ck["iteration"] == 2
    assert ck["counters"]["images"] == 2 * spec["run"]["recipe"]["batch"]  # both processes counted
    assert len(ck["rng"]) == 2
    assert any(k.endswith("running_mean") for k in ck["model"])  # a BN-type norm (NaiveSyncBatchNorm on CPU)
    assert sorted(history(spec["history"])) == [0, 1]  # only rank 0 writes


# ------------------------------------------------------------------------------ mixed precision
class StopAfter(hooks.HookBase):
    """Acts as a stop signal after iteration n (StopOnSignal then checkpoints and stops)."""

    def __init__(self, n: int):
        self.n = n

    def after_step(self) -> None:
        if self.trainer.iter == self.n and self.trainer.stop_signal is None:
            self.trainer.stop_signal = signal.SIGTERM


def test_amp_trains_in_bfloat16_on_cpu_and_resumes_exactly(tmp_path):
    """recipe.amp on the CPU: autocast bfloat16 (other losses than fp32); stopped after iteration 2
    and resumed, it ends with the same weights as a run that never stopped; a non-finite loss still
    stops it as diverged."""
    p = tiny_specs(tmp_path / "amp", recipe={"amp": True})
    seg = first_segment(p)
    straight = segment.train_segment(
        spec_of(p, seg, end=4, resume_dir=str(tmp_path / "r0"), output=str(tmp_path / "straight.pth"))
    )
    spec = spec_of(p, seg, end=4, resume_dir=str(tmp_path / "r1"), output=str(tmp_path / "resumed.pth"))
    with pytest.raises(loop.Preempted):
        segment.train_segment(spec, [StopAfter(2)])
    resumed = segment.train_segment(spec)
    assert resumed["history"][0]["iteration"] == 2
    assert_same_weights(weights(tmp_path / "straight.pth"), weights(tmp_path / "resumed.pth"))
    fp = tiny_specs(tmp_path / "fp32")
    plain = segment.train_segment(
        spec_of(fp, first_segment(fp), end=4, resume_dir=str(tmp_path / "r2"), output=str(tmp_path / "fp32.pth"))
    )
    assert [h["loss"] for h in plain["history"]] != [h["loss"] for h in straight["history"]]
    nan = segment.train_segment(
        spec_of(p, seg, end=4, resume_dir=str(tmp_path / "r3"), output=str(tmp_path / "nan.pth")), [switches.NanAt(1)]
    )
    assert nan["diverged"]["iteration"] == 1
