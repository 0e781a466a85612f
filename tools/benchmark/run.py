"""The orchestrator: users and their tokens, the server of each target, the phases in order,
and the results (partial results are written after each target)."""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from tests.support.process import ROOT
from tools.benchmark.closed import ClosedPhase
from tools.benchmark.config import Config, log
from tools.benchmark.generators import Generators
from tools.benchmark.idle import IdlePhase
from tools.benchmark.load import LoadPhase
from tools.benchmark.procfs import DatabaseCPU, busy_pct, cpu_times, proc_cpu, proc_rss_kb
from tools.benchmark.report import machine_info
from tools.benchmark.servers import Server
from tools.benchmark.site import BenchSite, BenchUser
from tools.benchmark.stats import Sample
from tools.benchmark.storm import StormPhase


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cfg: Config = args.cfg
        self.run_dir = args.out
        self.site: BenchSite | None = None
        self.db_cpu = DatabaseCPU(args.db)
        self.results: dict[str, Any] = {"targets": {}, "warnings": [], "config": asdict(self.cfg)}
        self.gens: Generators | None = None
        self.server: Server | None = None
        self.secret = secrets.token_urlsafe(24)
        self.users: dict[str, Any] = {}
        self.load = LoadPhase(self)
        self.idle = IdlePhase(self)
        self.closed = ClosedPhase(self)
        self.storm = StormPhase(self)

    # -- samples ----------------------------------------------------------------------------
    def sample(self) -> Sample:
        assert self.server is not None and self.gens is not None
        questions = None
        if self.site is not None and self.server.target == "gchat":
            try:
                questions = self.site.questions()
            except Exception:
                questions = None
        return Sample(server_cpu=proc_cpu(self.server.pid), gen_cpu=self.gens.cpu(),
                      db_cpu=self.db_cpu.seconds(),
                      queries=self.server.queries(), questions=questions, t=time.monotonic(), cpus=cpu_times())

    def warn(self, text: str) -> None:
        if text not in self.results["warnings"]:
            self.results["warnings"].append(text)
        log("WARNING: " + text)

    def wait_quiet(self) -> None:
        """Wait (bounded) until other processes leave the two cores mostly idle."""
        deadline = time.monotonic() + self.cfg.quiet_wait
        while True:
            before = cpu_times()
            time.sleep(3)
            after = cpu_times()
            load = sum(busy_pct(before, after, c) for c in (self.args.server_cpu, self.args.gen_cpu))
            if load < 30 or time.monotonic() >= deadline:
                break
            log(f"the machine is busy ({load:.0f}% of the two cores used by other processes); waiting")
        self.results.setdefault("load_at_start", {})[len(self.results["targets"])] = load
        if load >= 30:
            self.warn(f"other processes used {load:.0f}% of the two cores when a target started")

    # -- users ------------------------------------------------------------------------------
    def plan_users(self, targets: list[str]) -> None:
        cfg = self.cfg
        pair_sets = {"ws": [("ws", "ws")] * cfg.ws_pairs, "poll": [("poll", "poll")] * cfg.poll_pairs,
                     "mixed": [("ws", "ws"), ("ws", "poll"), ("poll", "poll")] * cfg.mixed_pairs,
                     "closed_ws": [("ws", "ws")] * cfg.closed_pairs,
                     "closed_poll": [("poll", "poll")] * cfg.closed_pairs}
        idle_n = max(cfg.idle_levels) + 20  # 20 warm-up clients before the baseline RSS
        if "gchat" in targets:
            name = f"gchat_bench_{os.getpid()}"
            self.site = BenchSite(self.args.db, name)
            self.results["database"] = name
            started = time.monotonic()
            self.site.create(ROOT, self.args.python)
            sets = {key: self.site.add_groups([2] * len(pairs)) for key, pairs in pair_sets.items()}
            groups = self.site.add_groups([cfg.idle_group] * math.ceil(idle_n / cfg.idle_group))
            idle = [u for g in groups for u in g][:idle_n]
            if "storm" in self.args.phases:
                self.users["storm"] = {n: self.site.add_groups([n + 2])[0] for n in cfg.storm_levels}
            users = sum(len(s) for s in sets.values()) * 2 + len(idle)
            log(f"{self.db_cpu.name} database {name}: {users} users, sessions "
                f"and courses in {time.monotonic() - started:.1f} s")
        else:
            next_id = [10]

            def user() -> BenchUser:
                next_id[0] += 1
                return BenchUser(next_id[0], "")

            sets = {key: [[user(), user()] for _ in pairs] for key, pairs in pair_sets.items()}
            idle = [user() for _ in range(idle_n)]
        self.users.update({"pairs": {key: list(zip(sets[key], pair_sets[key])) for key in pair_sets}, "idle": idle})

    def tokens(self, target: str, users: list[Any], bootstrap: bool) -> dict[int, str]:
        """gchat: a token from api/bootstrap (the real path) or, for the thousands of idle users,
        minted with gchat's own signer and secret for their real Moodle session. Relays: the id."""
        if target != "gchat":
            return {u.id: str(u.id) for u in users}
        if not bootstrap:
            from gchat.auth import Identity, TokenSigner
            from gchat.moodle import sid_hash

            signer = TokenSigner(self.secret, 3600)
            return {u.id: signer.issue(Identity(u.id, sid_hash(u.sid))) for u in users}
        assert self.server is not None
        port = self.server.port

        def one(user: Any) -> tuple[int, str]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                conn.request("GET", "/gchat/api/bootstrap", headers={"Cookie": f"MoodleSession={user.sid}"})
                response = conn.getresponse()
                body = json.loads(response.read())
                if response.status != 200:
                    raise RuntimeError(f"bootstrap of user {user.id}: {response.status} {body}")
                return user.id, body["token"]
            finally:
                conn.close()

        with ThreadPoolExecutor(16) as pool:
            return dict(pool.map(one, users))

    # -- servers ----------------------------------------------------------------------------
    def start_server(self, target: str, hb_scale: float = 1.0) -> Server:
        self.server = Server(target, self.args, self.run_dir, hb_scale=hb_scale,
                             db_url=self.site.url if self.site is not None else None, secret=self.secret)
        self.server.start()
        return self.server

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def target_spec(self, target: str) -> dict[str, Any]:
        assert self.server is not None
        return {"kind": target, "host": "127.0.0.1", "port": self.server.port, "prefix": "/gchat"}

    def run_target(self, target: str) -> dict[str, Any]:
        started = time.monotonic()
        out: dict[str, Any] = {}
        self.wait_quiet()
        if "load" in self.args.phases:
            server = self.start_server(target)
            try:
                out["start_rss_kb"] = proc_rss_kb(server.pid)
                out["ws"] = self.load.knee(target, "ws")
                out["poll"] = self.load.knee(target, "poll")
                knees = [k["knee"]["rate"] for k in (out["ws"], out["poll"]) if k["knee"]]
                if knees:
                    out["mixed"] = self.load.mixed(target, min(knees) / 2)
                out["after_load_rss_kb"] = proc_rss_kb(server.pid)
            finally:
                self.stop_server()
        if "closed" in self.args.phases:
            self.start_server(target)
            try:
                out["closed_ws"] = self.closed.run(target, "ws")
                out["closed_poll"] = self.closed.run(target, "poll")
            finally:
                self.stop_server()
        if "storm" in self.args.phases and target == "gchat":
            out["storm"] = [self.storm.run(target, n, course) for n, course in self.users["storm"].items()]
        if "idle" in self.args.phases:
            out["idle_ws"] = self.idle.run(target, "ws")
            out["idle_poll"] = self.idle.run(target, "poll")
        out["seconds"] = time.monotonic() - started
        log(f"{target}: done in {out['seconds']:.0f} s")
        return out

    def run(self, targets: list[str]) -> dict[str, Any]:
        self.results["machine"] = machine_info(self.args)
        self.plan_users(targets)
        self.gens = Generators(self.args.gen_procs, self.args.gen_cpu, not self.args.no_uvloop)
        try:
            for target in targets:
                self.results["targets"][target] = self.run_target(target)
                with open(os.path.join(self.run_dir, "results.json"), "w") as handle:  # partial results
                    json.dump(self.results, handle, indent=1, default=str)
        finally:
            self.gens.close()
            self.stop_server()
            if self.site is not None and not self.args.keep_db:
                self.site.drop()
        return self.results
