"""Benchmark of a good bump on the simulated world (a script, not a test): one real tracker
run moving every user to a good build that needs `ready delay` seconds to become ready,
beside its irreducible work measured on the same world. Prints tables; asserts nothing.

    python3 bench/bench_bump.py [--users 3,50] [--delays 0,1.5] [--dir /var/tmp] [--keep]

For each (users, delay): the whole run's wall time; its phases (stamped as the run goes: each
outcome line on stderr when it arrives, the journal's phase when it changes); each user's time
in the canary (before the stop, stop -> serving, the canary gate and its login); the tracker
process's peak RSS. Then the FLOOR, the work no tracker can skip, on the same world:

- stage: `npm install` of the build alone (fresh cache, as staging has);
- one throwaway server's readiness: the build started on a copy of a user's pre-bump
  database (its migration included) until it answers;
- per user: `systemctl stop`, `systemctl start`, readiness (polled every 50 ms) of the
  user's own instance on the new build, migrating the user's pre-bump databases (put back
  after the stop, untimed) as the run's restart did.

Then the CHECKS every run makes on top of that floor, each measured alone on the same world
(what a tracker that keeps its checks cannot go below): the resolve's `npm view` (fresh cache),
the health gate's pytest start-up and collection (`pytest --co` of gates/test_health.py, as the
runner starts it), and per user one login through the dispatch (the mint and the exchange).

Targets (issue 12): run <= 1.25 x floor; 50 users: wall time linear in users, per user <= its
restart + readiness + 0.5 s, memory flat. The last table puts every case side by side.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from runner import proc  # noqa: E402
from runner.gaterun import GATES_DIR, GATE_FILES  # noqa: E402
from runner.resolve import npm_view_argv  # noqa: E402
from runner.t3client import DispatchClient  # noqa: E402
from runner.units import serve_unit_name  # noqa: E402
from tests.sim import builds  # noqa: E402
from tests.sim.proc import ServeProcess  # noqa: E402
from tests.sim.world import DEPLOYMENT_USERS, SimUser, World  # noqa: E402

TARGET = "0.0.30-nightly.20261201.800"  # newer than every V1 catalogue build; the world starts on 0.0.24
BASE_PROFILE = "good-0.0.28"
POLL = 0.05
RUN_TIMEOUT = 1800.0


def bench_users(count: int) -> tuple[SimUser, ...]:
    """The deployment's three users, or `count` users of the bench's own."""
    if count == len(DEPLOYMENT_USERS):
        return DEPLOYMENT_USERS
    return tuple(SimUser(f"bench{i:02d}", f"benchu{i:02d}") for i in range(count))


def publish_target(world: World, delay: float) -> None:
    """A good build (good-0.0.28's behaviour) that listens `delay` s after migrating, under TARGET."""
    profile = dataclasses.replace(builds.PROFILES[BASE_PROFILE], name=f"good-ready-{delay:g}s", ready_delay=delay)
    tarball = builds.build_tarball(TARGET, profile, world.root / "bench-tarballs")
    world.registry.publish(tarball, published_at=datetime.now(timezone.utc) - timedelta(days=1))
    world.registry.set_tag("nightly", TARGET)


# ------------------------------------------------------------------ one run, stamped as it goes

@dataclass
class Line:
    at: float  # time.time() when the line arrived
    event: str
    fields: dict


def parse_line(text: str) -> tuple[str, dict] | None:
    """`t3-autoupdate: EVENT WORDS key=value key="quoted value"` -> (event, fields)."""
    prefix = "t3-autoupdate: "
    if not text.startswith(prefix):
        return None
    words, fields, rest = [], {}, text[len(prefix):].strip()
    while rest:
        if "=" in rest.split(" ", 1)[0]:
            key, _, rest = rest.partition("=")
            if rest.startswith('"'):
                decoder = json.JSONDecoder()
                value, end = decoder.raw_decode(rest)
                rest = rest[end:].lstrip()
            else:
                value, _, rest = rest.partition(" ")
            fields[key] = value
        else:
            word, _, rest = rest.partition(" ")
            words.append(word)
    return " ".join(words), fields


@dataclass
class Run:
    started: float
    exit_code: int | None = None
    ended: float | None = None
    lines: list[Line] = field(default_factory=list)
    phases: list[tuple[str, float]] = field(default_factory=list)  # journal phase, first seen at
    peak_rss_kb: int = 0
    stderr: list[str] = field(default_factory=list)
    cpu: float = 0.0  # CPU seconds of the run and every process it waited for
    load: tuple[str, str] = ("", "")  # the machine's 1-minute load average at the start and the end

    def first(self, event: str) -> Line | None:
        return next((line for line in self.lines if line.event == event), None)

    def last(self, event: str) -> Line | None:
        return next((line for line in reversed(self.lines) if line.event == event), None)

    def all(self, event: str) -> list[Line]:
        return [line for line in self.lines if line.event == event]

    def phase_at(self, phase: str) -> float | None:
        return next((at for name, at in self.phases if name == phase), None)


def load_average() -> str:
    """The 1-minute load average: every figure here scales with it on a shared machine."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def _peak_rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for row in status:
                if row.startswith("VmHWM:"):
                    return int(row.split()[1])
    except OSError:
        return None
    return None


def run_tracker(world: World) -> Run:
    """One real `t3-autoupdate` run: each stderr line stamped on arrival, the journal's phase
    and the tracker's peak RSS (VmHWM) sampled every 20 ms while it runs."""
    journal = world.state_dir / "journal"
    run = Run(started=time.time(), load=(load_average(), ""))
    child = subprocess.Popen([sys.executable, "-m", "runner.cli"], env=world.runner_env(), cwd=world.root,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def read_stderr():
        for text in child.stderr:
            run.stderr.append(text)
            parsed = parse_line(text.rstrip("\n"))
            if parsed:
                run.lines.append(Line(time.time(), *parsed))

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    deadline = time.monotonic() + RUN_TIMEOUT
    tick = threading.Event()
    while True:
        # wait4, not poll: its rusage is the run's CPU time (the tracker and every process it
        # waited for: npm, pytest, sqlite3, systemctl), which load hardly moves, unlike wall time.
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            child.returncode = os.waitstatus_to_exitcode(status)
            run.cpu = usage.ru_utime + usage.ru_stime
            break
        peak = _peak_rss_kb(child.pid)
        if peak:
            run.peak_rss_kb = max(run.peak_rss_kb, peak)
        try:
            phase = json.loads(journal.read_text()).get("phase")
        except (OSError, ValueError):
            phase = None
        if phase and (not run.phases or run.phases[-1][0] != phase):
            run.phases.append((phase, time.time()))
        if time.monotonic() > deadline:
            child.kill()
        tick.wait(0.02)
    run.ended, run.exit_code = time.time(), child.returncode
    run.load = (run.load[0], load_average())
    reader.join(10)
    return run


# ------------------------------------------------------------------ the floor, on the same world

def floor_stage(world: World, work: Path) -> float:
    """`npm install` of TARGET alone, fresh cache (staging starts from an empty one)."""
    cache, prefix = work / "floor-npm-cache", work / "floor-prefix"
    env = {**world.npm_env(), **world.registry.npm_env(cache)}
    started = time.monotonic()
    proc.run(["npm", "install", "--global", "--prefix", str(prefix), f"t3@{TARGET}"], env=env, cwd=work, timeout=300)
    return time.monotonic() - started


def floor_throwaway(world: World, work: Path, os_user: str) -> float:
    """TARGET started on a copy of `os_user`'s pre-bump database, until it answers HTTP."""
    backup = sorted((world.backup_dest / os_user).glob(f"state-prebump-{TARGET}-*.sqlite"))[-1]
    base = work / "floor-throwaway"
    (base / "userdata").mkdir(parents=True)
    shutil.copyfile(backup, base / "userdata" / "state.sqlite")
    t3_bin = world.releases_dir / TARGET / "bin" / "t3"
    started = time.monotonic()
    with ServeProcess(t3_bin, base, host="0.0.0.0") as serve:
        serve.wait_ready(timeout=120)
        took = time.monotonic() - started
    return took


def restore_prebump(world: World, user: SimUser) -> None:
    """The user's pre-bump databases back in place while the instance is stopped, so the start
    migrates them as the bump's own restart had to (the run left them migrated)."""
    userdata = world.userdata(user.os_user)
    for backup in (world.backup_dest / user.os_user).glob(f"*-prebump-{TARGET}-*.sqlite"):
        name = backup.name.split("-prebump-", 1)[0] + ".sqlite"
        for side in ("-wal", "-shm", "-journal"):
            (userdata / (name + side)).unlink(missing_ok=True)
        with open(backup, "rb") as src, open(userdata / name, "r+b") as dst:  # the same file: its owner stays
            dst.truncate(0)
            shutil.copyfileobj(src, dst)


def floor_restart(world: World, user: SimUser) -> float:
    """`systemctl stop`, `systemctl start`, then the instance's environment answering 200, on the
    user's pre-bump databases (put back between the two, untimed): the migration is included."""
    unit = serve_unit_name(user.os_user)
    url = f"http://127.0.0.1:{world.port_of(user.sso)}/.well-known/t3/environment"
    started = time.monotonic()
    world.systemctl_run("stop", unit)
    stopping = time.monotonic() - started
    restore_prebump(world, user)
    started = time.monotonic() - stopping
    world.systemctl_run("start", unit)
    deadline = started + 120
    with requests.Session() as session:
        session.trust_env = False
        while True:
            try:
                if session.get(url, timeout=2).status_code == 200:
                    return time.monotonic() - started
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{unit} did not serve again within 120 s")
            time.sleep(POLL)


@dataclass
class Floor:
    stage: float
    throwaway: float
    restarts: dict[str, float]

    @property
    def total(self) -> float:
        return self.stage + self.throwaway + sum(self.restarts.values())


def measure_floor(world: World, work: Path) -> Floor:
    stage = floor_stage(world, work)
    throwaway = floor_throwaway(world, work, world.users[0].os_user)
    restarts = {user.os_user: floor_restart(world, user) for user in world.users}
    return Floor(stage, throwaway, restarts)


def timed(what) -> float:
    started = time.monotonic()
    what()
    return time.monotonic() - started


@dataclass
class Checks:
    """The checks every run makes beyond the floor, each measured alone (seconds)."""
    resolve: float           # npm view, fresh cache
    health_start: float      # the health gate's pytest: start-up and collection
    logins: dict[str, float]  # one login through the dispatch per user

    @property
    def total(self) -> float:
        return self.resolve + self.health_start + sum(self.logins.values())


def measure_checks(world: World, work: Path) -> Checks:
    cache = work / "checks-npm-cache"
    resolve = timed(lambda: proc.run(npm_view_argv("npm", "t3", "nightly", cache), env=world.npm_env(),
                                     cwd=work, timeout=120))
    user = world.users[0].os_user
    seed = sorted((world.backup_dest / user).glob(f"state-prebump-{TARGET}-*.sqlite"))[-1]
    collect = [sys.executable, "-m", "pytest", str(GATES_DIR / GATE_FILES["health"]), "--co", "-q",
               "-p", "pytest_timeout", "--seed-db", f"{user}={seed}"]
    env = {**proc.child_env(), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}

    def collect_only() -> None:  # the gate fails a run that passed nothing: collecting alone exits 1
        done = proc.run(collect, env=env, cwd=work, timeout=120, ok_codes=(0, 1))
        if "tests collected" not in done.stdout:
            raise RuntimeError(f"the health gate collected nothing: {done.stdout[-500:]}")

    health_start = timed(collect_only)
    dispatch = DispatchClient(world.dispatch.url)

    def login(sso: str) -> None:
        answer = dispatch.visit(sso)
        if answer.status_code != 302:
            raise RuntimeError(f"{sso}'s login answered {answer.status_code}, expected 302")

    logins = {u.os_user: timed(lambda sso=u.sso: login(sso)) for u in world.users}
    return Checks(resolve, health_start, logins)


# ------------------------------------------------------------------ reading a run

@dataclass
class UserTimes:
    os_user: str
    before_stop: float  # busy check, lock, journal: from the previous user's verdict to the stop
    restart: float      # stop issued -> serving seen (the RESTARTED event's own stamps)
    gate: float         # serving seen -> CANARY PASSED: the canary gate's pytest and its login

    @property
    def total(self) -> float:
        return self.before_stop + self.restart + self.gate


def phase_rows(run: Run) -> list[tuple[str, float | None]]:
    """(phase, seconds) from the stamps; None where a stamp is missing (a phase shorter than
    one 20 ms sample of the journal)."""
    update = run.first("UPDATE START")
    backed = run.last("BACKED UP")
    health_passed = run.first("HEALTH-CHECK PASSED")
    done = run.first("update complete")
    stage_at, health_at = run.phase_at("stage"), run.phase_at("health")

    def span(a, b):
        return None if a is None or b is None else b - a

    at = {"update": update.at if update else None, "backed": backed.at if backed else None,
          "health_passed": health_passed.at if health_passed else None, "done": done.at if done else None}
    return [
        ("start, resolve (npm view)", span(run.started, at["update"])),
        ("backups (staging runs beside them)", span(at["update"], at["backed"])),
        ("staging left after the backups", span(stage_at, health_at)),
        ("health gate", span(health_at, at["health_passed"])),
        ("canary, every user", span(at["health_passed"], at["done"])),
        ("commit, exit", span(at["done"], run.ended)),
    ]


def user_rows(run: Run) -> list[UserTimes]:
    rows = []
    previous = run.first("HEALTH-CHECK PASSED")
    previous_at = previous.at if previous else run.started
    passed = {line.fields.get("user"): line.at for line in run.all("CANARY PASSED")}
    for line in run.all("RESTARTED"):
        user = line.fields["user"]
        stopped, serving = float(line.fields["stopped_at"]), float(line.fields["serving_at"])
        verdict = passed.get(user, serving)
        rows.append(UserTimes(user, stopped - previous_at, serving - stopped, verdict - serving))
        previous_at = verdict
    return rows


# ------------------------------------------------------------------ printing

def fmt(value: float | None, width: int = 7) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.2f}"


@dataclass
class Case:
    users: int
    delay: float
    run: Run
    floor: Floor
    per_user: list[UserTimes]
    checks: Checks | None = None

    @property
    def wall(self) -> float:
        return self.run.ended - self.run.started


def print_case(case: Case) -> None:
    run, floor = case.run, case.floor
    print(f"\n=== good bump 0.0.24 -> {TARGET}, {case.users} users, ready delay {case.delay:g} s: "
          f"exit {run.exit_code}, {case.wall:.2f} s wall, {run.cpu:.2f} CPU s, tracker peak RSS {run.peak_rss_kb / 1024:.1f} MB, "
          f"load {run.load[0]} -> {run.load[1]} on {os.cpu_count()} CPUs")
    print(f"{'phase':<40} {'s':>7}")
    for name, seconds in phase_rows(run):
        print(f"{name:<40} {fmt(seconds)}")
    print(f"\n{'user':<12} {'before stop':>11} {'stop->serving':>13} {'gate+login':>10} {'total':>7} "
          f"{'floor':>7} {'excess':>7}")
    for row in (case.per_user if case.users <= 10 else case.per_user[:3] + case.per_user[-2:]):
        restart_floor = floor.restarts.get(row.os_user)
        print(f"{row.os_user:<12} {row.before_stop:>11.2f} {row.restart:>13.2f} {row.gate:>10.2f} {row.total:>7.2f} "
              f"{fmt(restart_floor)} {fmt(row.total - restart_floor if restart_floor is not None else None)}")
    if case.per_user:
        medians = [statistics.median(getattr(r, name) for r in case.per_user)
                   for name in ("before_stop", "restart", "gate", "total")]
        restart_floor = statistics.median(floor.restarts.values())
        print(f"{'median':<12} {medians[0]:>11.2f} {medians[1]:>13.2f} {medians[2]:>10.2f} {medians[3]:>7.2f} "
              f"{restart_floor:>7.2f} {medians[3] - restart_floor:>7.2f}")
    print(f"\n{'irreducible work (floor)':<40} {'s':>7}")
    print(f"{'stage: npm install alone':<40} {floor.stage:>7.2f}")
    print(f"{'one throwaway server ready':<40} {floor.throwaway:>7.2f}")
    print(f"{f'users: stop+start+ready x{len(floor.restarts)}':<40} {sum(floor.restarts.values()):>7.2f}")
    print(f"{'floor total':<40} {floor.total:>7.2f}")
    print(f"{'whole run':<40} {case.wall:>7.2f}")
    print(f"{'run / floor (target <= 1.25)':<40} {case.wall / floor.total:>7.2f}")
    checks = case.checks
    if checks is not None:
        print(f"\n{'checks every run makes, each alone':<40} {'s':>7}")
        print(f"{'resolve: npm view':<40} {checks.resolve:>7.2f}")
        print(f"{'health gate: pytest start + collection':<40} {checks.health_start:>7.2f}")
        print(f"{f'logins through the dispatch x{len(checks.logins)}':<40} {sum(checks.logins.values()):>7.2f}")
        with_checks = floor.total + checks.total
        print(f"{'floor + checks':<40} {with_checks:>7.2f}")
        print(f"{'run / (floor + checks)':<40} {case.wall / with_checks:>7.2f}")
    if run.exit_code != 0:
        print("RUN FAILED; its last lines:\n" + "".join(run.stderr[-15:]))


def print_summary(cases: list[Case]) -> None:
    print("\n=== every case: wall vs floor; canary per user vs restart+readiness (target: excess <= 0.5 s)")
    print(f"{'users':>5} {'delay':>5} {'wall s':>7} {'floor s':>7} {'ratio':>6} {'+checks':>7} {'ratio':>6} "
          f"{'canary s':>8} {'per user':>8} "
          f"{'restart':>7} {'excess':>7} {'RSS MB':>7} {'CPU s':>7} {'load':>11}")
    for case in cases:
        canary = next(s for name, s in phase_rows(case.run) if name.startswith("canary"))
        per_user = canary / case.users if canary is not None else None
        restart = statistics.median(case.floor.restarts.values())
        with_checks = case.floor.total + case.checks.total if case.checks else None
        print(f"{case.users:>5} {case.delay:>5g} {case.wall:>7.2f} {case.floor.total:>7.2f} "
              f"{case.wall / case.floor.total:>6.2f} {fmt(with_checks)} "
              f"{fmt(case.wall / with_checks if with_checks else None, 6)} {fmt(canary, 8)} {fmt(per_user, 8)} {restart:>7.2f} "
              f"{fmt(per_user - restart if per_user is not None else None)} {case.run.peak_rss_kb / 1024:>7.1f} "
              f"{case.run.cpu:>7.2f} {case.run.load[0] + '->' + case.run.load[1]:>11}")
    for delay in sorted({c.delay for c in cases}):
        same = sorted((c for c in cases if c.delay == delay), key=lambda c: c.users)
        if len(same) >= 2:
            low, high = same[0], same[-1]
            slope = (high.wall - low.wall) / (high.users - low.users)
            print(f"delay {delay:g} s: wall grows {slope:.2f} s per added user from {low.users} to {high.users} "
                  f"users (a straight line through both predicts {low.wall + slope * (high.users - low.users):.1f} s "
                  f"for {high.users}); peak RSS {low.run.peak_rss_kb / 1024:.1f} -> {high.run.peak_rss_kb / 1024:.1f} MB")


# ------------------------------------------------------------------ main

def bench_case(users: int, delay: float, work_root: Path, keep: bool) -> Case:
    work = Path(tempfile.mkdtemp(prefix=f"bump-{users}u-{delay:g}s-", dir=work_root))
    work.chmod(0o711)  # the users' uids pass through to their homes
    world = World(work / "world", users=bench_users(users))
    try:
        built = time.monotonic()
        world.build()
        print(f"[{users} users, delay {delay:g} s] world built in {time.monotonic() - built:.1f} s at {work}",
              flush=True)
        publish_target(world, delay)
        run = run_tracker(world)
        print(f"[{users} users, delay {delay:g} s] run exit {run.exit_code} in {run.ended - run.started:.1f} s; "
              "measuring the floor", flush=True)
        if run.exit_code != 0:
            return Case(users, delay, run, Floor(float("nan"), float("nan"), {}), user_rows(run))
        return Case(users, delay, run, measure_floor(world, work), user_rows(run), measure_checks(world, work))
    finally:
        world.stop()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", default="3,50", help="user counts, comma-separated")
    parser.add_argument("--delays", default="0,1.5", help="ready delays of the new build in seconds")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="where the worlds go (on disk)")
    parser.add_argument("--keep", action="store_true", help="keep each world (its runs/ and logs) for a look")
    args = parser.parse_args(argv)
    cases = []
    for users in (int(n) for n in args.users.split(",")):
        for delay in (float(d) for d in args.delays.split(",")):
            case = bench_case(users, delay, args.dir, args.keep)
            print_case(case)
            cases.append(case)
    if cases:
        print_summary(cases)
    return 0 if all(c.run.exit_code == 0 for c in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
