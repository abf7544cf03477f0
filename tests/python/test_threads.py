"""Many threads at once: correctness, parallelism (streams used concurrently) and the proof
that these tests can fail (protections off -> the sim reports violations)."""

import threading

import torch

from conftest import DEVICE, run_python, sim_stats


def run_in_threads(n, fn):
    errors = []
    barrier = threading.Barrier(n)

    def wrapper(i):
        try:
            barrier.wait()
            fn(i)
        except BaseException as e:  # counted, never swallowed
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=wrapper, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return errors


def test_model_moved_on_main_thread_runs_from_8_workers():
    torch.mps_sim.set_threadsafe(True)
    torch.manual_seed(0)
    model = torch.nn.TransformerEncoderLayer(64, 4, dim_feedforward=128, batch_first=True).eval()
    inputs = [torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    with torch.no_grad():
        expected = [model(x) for x in inputs]
    model = model.to(DEVICE)  # weights uploaded on the main thread's stream
    results = [None] * 8
    all_bound = threading.Barrier(8)
    stream_ids = []

    def work(i):
        with torch.no_grad():
            x = inputs[i].to(DEVICE)
            # Every thread holds its pool stream before any runs the model, so the 8 run on
            # 8 streams whatever the scheduler does.
            all_bound.wait(120)
            stream_ids.append(torch.mps_sim.current_stream().stream_id)
            for _ in range(3):
                results[i] = model(x).cpu()
    errors = run_in_threads(8, work)
    assert errors == []
    for got, exp in zip(results, expected):
        torch.testing.assert_close(got, exp, atol=1e-4, rtol=1e-4)
    stats = sim_stats()
    assert len(set(stream_ids)) == 8 and 0 not in stream_ids  # 8 pool streams at once
    assert stats["max_active_streams"] > 1
    assert stats["contract_violations"] == 0 and stats["sim"]["violations"] == 0


def test_tensor_produced_on_one_thread_consumed_on_another_without_sync():
    torch.mps_sim.set_threadsafe(True)
    produced = {}
    ready = threading.Event()
    host = torch.randn(300, 300)

    def producer():
        x = host.to(DEVICE)
        produced["y"] = (x @ x) * 2 + 1  # left on the producer's stream, not synchronized
        ready.set()

    consumed = {}

    def consumer():
        ready.wait(60)
        consumed["z"] = (produced["y"] - 1).sum(dim=0).cpu()

    p, c = threading.Thread(target=producer), threading.Thread(target=consumer)
    c.start()
    p.start()
    p.join()
    c.join()
    expected = ((host @ host) * 2 + 1 - 1).sum(dim=0)
    # The same CPU kernels compute both: exact.
    assert torch.equal(consumed["z"], expected)


def test_counters_move_as_expected():
    torch.mps_sim.set_threadsafe(True)
    before = sim_stats()
    x = torch.randn(32, 32, device=DEVICE)
    for _ in range(5):
        x = torch.nn.functional.layer_norm(x @ x, (32,))
    x.cpu()
    after = sim_stats()
    ops = lambda s: sum(st["ops_encoded"] for st in s["streams"])  # noqa: E731
    waits_and_commits = lambda s: sum(st["commits"]["COMMIT_AND_WAIT"] for st in s["streams"])  # noqa: E731
    assert ops(after) - ops(before) >= 11
    assert waits_and_commits(after) > waits_and_commits(before)
    ln = lambda s: next((d["acquisitions"] for d in s["domains"] if d["name"] == "layer_norm"), 0)  # noqa: E731
    assert ln(after) - ln(before) == 5
    assert after["sim"]["kernels_executed"] - before["sim"]["kernels_executed"] >= 11


# The unprotected runs make their race certain, not likely (Note [Race meetings] in
# aten_mps/sim/inside.cpp): at the race points named, the first thread inside a Metal object
# stays there until a second thread tries that object, whatever the machine's load. A thread
# that sees the first violation switches the meetings off, which releases any thread still
# waiting in one. The meeting's timeout only bounds a broken run; meetings that timed out are
# printed, and a run that caught nothing fails.
UNSAFE_RUN = """
    import threading, torch, mps_threadsafe
    torch.mps_sim.set_violation_policy("count")
    torch.mps_sim.set_threadsafe({threadsafe})
    layer = torch.nn.TransformerEncoderLayer(64, 4, dim_feedforward=128, batch_first=True).eval().to("mps_sim")
    x = torch.randn(2, 16, 64)
    torch.mps_sim.synchronize()
    torch.mps_sim.set_protections(False)
    POINTS = {points}
    for point in POINTS:
        torch.mps_sim.set_race_meeting(point, 120_000_000)
    def caught():
        if torch.mps_sim.threadsafe_stats()["sim"]["violations"]:
            for point in POINTS:
                torch.mps_sim.set_race_meeting(point, 0)
            return True
        return False
    errors = []
    def work():
        try:
            with torch.no_grad():
                xd = x.to("mps_sim")
                for _ in range(15):
                    if caught():
                        break  # carrying on in a corrupted state proves nothing more
                    layer(xd).cpu()
        except Exception as e:
            errors.append(e)
        caught()
    ts = [threading.Thread(target=work) for _ in range(8)]
    [t.start() for t in ts]; [t.join() for t in ts]
    sim = torch.mps_sim.threadsafe_stats()["sim"]
    print("VIOLATIONS", sim["violations"])
    print("MEETINGS", sim["race_meetings"], "TIMEOUTS", sim["race_meeting_timeouts"])
    print("\\n".join(sorted(set(torch.mps_sim.violations()))[:3]))
"""

# Upstream's model: every thread on the default stream, nothing serializing them; the threads
# meet inside the stream's command buffer and encoder.
UPSTREAM_POINTS = ["command_buffer", "encoder"]


def caught_or_crashed(proc):
    """With policy 'count' the sim records a violation and carries on, in exactly the state a
    Mac crashes in; the process may then really crash. Either way the unprotected mode failed."""
    if proc.returncode < 0:
        return True
    assert proc.returncode == 0, proc.stderr[-2000:]
    return False


def test_unsafe_mode_upstream_policy_hits_violations():
    proc = run_python(UNSAFE_RUN.format(threadsafe=False, points=UPSTREAM_POINTS))
    if caught_or_crashed(proc):
        return
    count = int(proc.stdout.split("VIOLATIONS")[1].split()[0])
    assert count > 0, proc.stdout
    assert "MTLDebugCommandBuffer" in proc.stdout or "MTLDebugComputeCommandEncoder" in proc.stdout, \
        proc.stdout  # the shared command buffer or its encoder was raced
    assert int(proc.stdout.split("MEETINGS")[1].split()[0]) >= 1, proc.stdout


def test_unsafe_mode_without_domains_hits_shared_object_violations():
    # Own streams but no serialization domains: the shared layer_norm / gather kernel objects
    # are encoded by two threads at once; the meeting makes the overlap certain.
    proc = run_python(UNSAFE_RUN.format(threadsafe=True, points=["shared_object"]))
    if caught_or_crashed(proc):
        return
    assert int(proc.stdout.split("VIOLATIONS")[1].split()[0]) > 0, proc.stdout
    assert "SharedObject" in proc.stdout
    assert int(proc.stdout.split("MEETINGS")[1].split()[0]) >= 1, proc.stdout


def test_unsafe_mode_with_abort_policy_crashes_the_process():
    proc = run_python(UNSAFE_RUN.replace('set_violation_policy("count")', 'set_violation_policy("abort")')
                      .format(threadsafe=False, points=UPSTREAM_POINTS))
    assert proc.returncode < 0, (proc.returncode, proc.stdout)  # killed by SIGABRT, as on a Mac
    assert "MTL" in proc.stderr or "AGX" in proc.stderr, proc.stderr[-2000:]  # Metal's message
