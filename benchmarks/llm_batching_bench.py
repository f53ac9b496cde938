"""Issue 11: continuous batching in the llama.cpp engine, and KV-aware routing, measured.

    PYTHONPATH=. python benchmarks/llm_batching_bench.py [--duration 30] [--runs 2]
        [--concurrency 1 4 8 16] [--threads 2] [--slots 16] [--max-tokens 64]
        [--servers today new llama-server] [--repack auto|on|off] [--today-kernels same|own]
        [--servemesh-args '--slots {slots} --threads {threads} --repack {repack}']
    PYTHONPATH=. python benchmarks/llm_batching_bench.py --kv [--engine llamacpp|mock]
        [--conversations 16] [--turns 4] [--kv-concurrency 4] [--policies kv round_robin]

Batching (the default mode): gemma-3-270m (the packaged model, ``resolve_model``), the same
thread count everywhere, aggregate completion tokens/s and TTFT p50 at each concurrency,
for three servers started one at a time (never two at once), in the same run:

- ``today``: the pipeline of the baseline tree (``--baseline-ref``, default 22931a5, the
  main of before issue 11), ``git archive``d once into the cache dir:
  ``examples/llm/pipeline.py --engine llamacpp --port P`` with PYTHONPATH at that tree.
  Its ``LlamaCppEngine`` takes no thread flag, so the bench starts it through a small
  launcher (``--launch-threads``) that gives llama.cpp ``n_threads`` = ``n_threads_batch``
  = ``--threads`` and, with ``--today-kernels same`` (the default), the same kernels as the
  other two: llama.cpp's weight repacking as ``--repack`` decides (today's engine turned it
  off, as its AMX kernels crashed before ``tools/llama_cpp_build.py`` fixed them);
  ``--today-kernels own`` leaves today's engine exactly as it was. Every server loads the
  same file: the packaged model, or with repacking and AMX kernels its copy with the Q5_0
  weights widened to Q8_0, exactly (``servemesh.llm.model.weights_for``);
- ``new``: this tree's (``--servemesh-tree``) ``examples/llm/pipeline.py --engine llamacpp
  --port P`` plus ``--servemesh-args`` (default ``--slots {slots} --threads {threads}
  --repack {repack}``).
  If that pipeline refuses those flags, the bench says so and goes on without it;
- ``llama-server``: llama.cpp's own server from the llama.cpp that llama-cpp-python vendors,
  the installed version's sdist (``pip download --no-deps --no-binary :all:
  llama-cpp-python==<installed>``, nothing else downloaded), with the same AMX fix as
  servemesh's llama-cpp-python (``tools/llama_cpp_build.py``), built once with cmake (Release,
  static, no CURL / OpenSSL / web UI / GPU backends, target ``llama-server`` only) into
  ``<cache>/llama-server-<version>/build/bin/``; started with ``--parallel {slots}``,
  ``-c slots x --ctx-per-slot``, ``-t``/``-tb`` the same threads, and llama-cpp-python's
  own defaults where llama-server's differ, so that both run the same kernels:
  ``--no-repack`` unless ``--repack`` allows repacking (``auto``: as servemesh's engine
  decides, ``servemesh.llm.model.extra_buffers``),
  ``-fa on`` (as servemesh's engine in its default mode) and ``--swa-full`` (as servemesh's engine); its prompt cache
  off (``--no-cache-prompt --cache-ram 0 -ctxcp 0``; the prompts are distinct anyway).
  ``--llama-server-args`` adds to that command line.

The load: one async httpx client in this process, ``POST /v1/completions`` with ``stream:
true``, ``stream_options.include_usage``, ``temperature: 0``, ``max_tokens`` (64); every
request a distinct prompt of ~80-95 tokens (``--seed``), so no prompt cache helps anyone.
Per concurrency level, C workers send back to back: ``--warmup`` seconds not counted, then
a window of ``--duration`` seconds; tokens/s = completion tokens that arrived in the window
/ the window (chunks with text, scaled by the ``usage.completion_tokens`` / chunks ratio of
the finished requests, so both servers are counted alike whatever they put in a chunk);
TTFT p50 over the requests sent in the window (send -> first chunk with text). The window
lasts ``--duration``, or longer until ``--min-ttft-samples`` (8) requests were sent in it;
the load stays on until each of those has its first token (so a queueing server is
measured in its steady state), then no new request is sent and those in flight finish:
none is dropped mid-stream (22931a5's engine stops answering after a client disconnects
mid-stream), and the server is idle before the next level. Each server's answer to one
prompt is shown (greedy: they should agree), and the mean tokens per finished request
(early EOS would show there; ``--ignore-eos`` sends ``ignore_eos``).

Threads: with as many llama.cpp threads as cores (``--threads 2`` on 2 cores), tokens/s
collapses (up to 20x, both servemesh and llama-server) whenever anything else runs on the
machine, as llama.cpp's threads wait on each other; measure on a quiet machine, or compare
with ``--threads 1``. The bench warns when the load average says the machine is busy.

``--runs N`` repeats today, new, llama-server (reversed every other run); the median is
shown, then one table with the ratios new/today and new/llama-server and a verdict against
the issue's targets: at concurrency 8, >= 3x today's tokens/s and >= 0.9x llama-server's;
at concurrency 1, within 5% of today's tokens/s.

--kv: KV-aware routing (the issue's second part). A multi-turn chat: ``--conversations`` (16)
x ``--turns`` (4), one shared system prompt (a few hundred tokens), each turn's messages =
the conversation so far (system, earlier user turns, the assistant answers actually
received) + a new user message, ``/v1/chat/completions`` streaming; conversation k starts
``k * --kv-arrival`` (1.0) s after the first, at most ``--kv-concurrency`` (16) at a time,
so by default every conversation is live at once and the engines' slots (8 each:
``--engine-args``) hold as many conversations as there are, between them. Topology per
policy, fresh processes each time, over a local
etcd + nats-server (``servemesh.testing``): two engines (``examples/llm/engine.py``), one
router (``examples/llm/router.py --policy kv|round_robin``), a processor calling the router
(``--engine-path`` or ``--via-router``), an OpenAI frontend. Reported per policy: TTFT p50
(all turns, and turns after the first), wall time, and each engine's ``stats`` endpoint
before and after (``inference.engine.stats``, called per instance): prompt tokens,
cached / computed prefill tokens, whatever is there. Target: KV-aware TTFT p50 <= half of
round-robin's. ``--engine mock`` uses the mock engine with ``--kv-blocks``/
``--prefill-s-per-token`` (``--mock-args``); a router that refuses ``--policy kv`` stops
the bench with a message saying so.

Examples:

    PYTHONPATH=. .venv/bin/python benchmarks/llm_batching_bench.py --duration 30 --runs 2
    PYTHONPATH=. .venv/bin/python benchmarks/llm_batching_bench.py --servers today llama-server \\
        --concurrency 1 8 --duration 10 --runs 1
    PYTHONPATH=. .venv/bin/python benchmarks/llm_batching_bench.py --kv --engine mock
    PYTHONPATH=. .venv/bin/python benchmarks/llm_batching_bench.py --kv --engine llamacpp --runs 1

``--no-install`` never downloads nor builds (llama-server must be there already), and
``--llama-server PATH`` uses another binary. Servers' logs go to ``--logs`` (default a
temporary folder, printed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import io
import itertools
import json
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from procs import stop_group, tree_cpu  # benchmarks/ is on sys.path when a benchmark runs as a script

ROOT = Path(__file__).resolve().parents[1]
BASELINE_REF = "22931a5"
MODEL = "gemma-3-270m"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "servemesh-bench"
REFUSED = ("unrecognized arguments", "invalid choice", "no such option", "No such option")


# -- prompts ------------------------------------------------------------------------------------------
NAMES = ["Amara", "Bruno", "Chiara", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Kemal",
         "Lucia", "Mateo", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Sven", "Tamar", "Umar", "Vera",
         "Wendell", "Ximena", "Yusuf", "Zofia", "Anders", "Beatriz", "Cyrus", "Delphine"]
PLACES = ["a fishing village on the northern coast", "the old observatory above the town", "a crowded night market",
          "a mountain pass covered in snow", "the basement of a public library", "a ferry crossing a wide river",
          "an abandoned railway station", "a vineyard at the edge of the desert", "a lighthouse on a rocky island",
          "the kitchen of a busy restaurant", "a research station in the far south", "a bakery that opens at dawn",
          "a small museum of clocks", "a greenhouse full of orchids", "a shipyard at the end of the harbour"]
THINGS = ["a brass compass that pointed south", "a letter with no return address", "a map drawn on linen",
          "a violin missing two strings", "a jar of seeds from another century", "a key too large for any door",
          "a notebook full of star charts", "a radio that only received one station", "a painted wooden bird",
          "a photograph of strangers at a wedding", "a tin box of foreign coins", "a lantern with green glass"]
MOODS = ["curious", "worried", "stubborn", "hopeful", "tired", "restless", "patient", "suspicious", "cheerful"]
ACTS = ["decided to follow the clues alone", "asked an old friend for help", "wrote down everything in a diary",
        "waited until the weather changed", "counted the days until the next ship", "studied the object for hours",
        "walked through the streets looking for answers", "listened to the stories of the oldest neighbour"]
ENDINGS = ["The next morning,", "Without telling anyone,", "When the rain finally stopped,", "Late that evening,",
           "After a long silence,", "Before the sun came up,"]


def make_prompt(seed: int, index: int) -> str:
    """A distinct ~80-95 token story opening, the same for every server and run."""
    r = random.Random(seed * 1_000_003 + index)
    name, other = r.sample(NAMES, 2)
    place, place2 = r.sample(PLACES, 2)
    thing = r.choice(THINGS)
    return (f"{name} was a {r.choice(MOODS)} person who lived near {place}. One day, {name} found {thing} "
            f"hidden under a loose floorboard. Nobody in the family knew where it came from, and {other}, "
            f"who had lived there for {r.randint(3, 60)} years, only shook their head. So {name} "
            f"{r.choice(ACTS)}. The trail led to {place2}. {r.choice(ENDINGS)}")


# -- processes ----------------------------------------------------------------------------------------


def log_tail(path: Path | None, lines: int = 8) -> str:
    if path is None or not path.exists():
        return ""
    text = path.read_text(errors="replace").strip().splitlines()
    errors = [line for line in text if "rror" in line or "xception" in line or "usage:" in line]
    return " | ".join((errors or text)[-lines:])[-900:]


@dataclass
class Proc:
    name: str
    cmd: list[str]
    env: dict[str, str]
    cwd: Path
    ready_url: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def start(self, logs: Path, timeout: float) -> None:
        """Starts it; with a ``ready_url``, returns once that answers 200."""
        from servemesh.testing import wait_http_ok

        self.log = logs / f"{self.name}.log"
        with open(self.log, "ab") as out:
            out.write(f"$ {shlex.join(self.cmd)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        if self.ready_url:
            wait_http_ok(self.ready_url, timeout, self.proc)

    def refused_flags(self) -> bool:
        """Whether it exited because its command line was refused (argparse / typer)."""
        if self.proc is None or self.proc.poll() is None:
            return False
        text = self.log.read_text(errors="replace") if self.log and self.log.exists() else ""
        return any(r in text for r in REFUSED)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_group(proc)


def servemesh_env(tree: Path, logs: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(tree) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for name in ("SERVEMESH_ETCD", "SERVEMESH_NATS", "SERVEMESH_TRANSPORT"):
        env.pop(name, None)
    env["SERVEMESH_STATE_DIR"] = str(logs / "no-stack")  # never join a `servemesh up` stack of this machine
    env.update(extra)
    return env


def git_head(tree: Path) -> str:
    found = subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    return found.stdout.strip()[:70] or "not a git tree"


def baseline_tree(ref: str, cache: Path, install: bool) -> Path:
    """The servemesh tree of ``ref`` (``git archive`` of this repository), made once in the cache."""
    full = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{ref}^{{commit}}"],
                          capture_output=True, text=True)
    if full.returncode != 0:
        raise RuntimeError(f"{ref} is not a commit of {ROOT}: {full.stderr.strip()}")
    tree = cache / f"servemesh-{full.stdout.strip()[:12]}"
    if (tree / "examples" / "llm" / "pipeline.py").exists():
        return tree
    if not install:
        raise RuntimeError(f"no baseline tree in {tree} (run without --no-install to make it)")
    part = tree.with_name(tree.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", full.stdout.strip()],
                             capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(part, filter="data")
    part.rename(tree)
    return tree


# -- llama-server from source -------------------------------------------------------------------------
def llama_cpp_version() -> str:
    """The installed llama-cpp-python's upstream version (without servemesh's ``+servemesh1`` label)."""
    try:
        return importlib.metadata.version("llama-cpp-python").split("+", 1)[0]
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError("llama-cpp-python is not installed in this interpreter (servemesh[llm])") from None


CMAKE_FLAGS = ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
               "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON",
               "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",  # no web UI, so nothing is downloaded
               "-DGGML_CUDA=OFF", "-DGGML_VULKAN=OFF", "-DGGML_METAL=OFF", "-DGGML_HIP=OFF", "-DGGML_OPENCL=OFF",
               "-DGGML_SYCL=OFF", "-DGGML_RPC=OFF"]
# GGML_NATIVE and GGML_OPENMP stay at their defaults (on), as in llama-cpp-python's own build from source


def ensure_llama_server(cache: Path, version: str, install: bool, jobs: int) -> Path:
    """``<cache>/llama-server-<version>/build/bin/llama-server``, built from the sdist on first use, with
    servemesh's AMX fix (``tools/llama_cpp_build.py``; an earlier build without it is rebuilt)."""
    sys.path.insert(0, str(ROOT / "tools"))
    import llama_cpp_build

    home = cache / f"llama-server-{version}"
    binary = home / "build" / "bin" / "llama-server"
    src = home / "src"
    if binary.exists() and llama_cpp_build.patched(src):
        return binary
    if not install:
        raise RuntimeError(f"no llama-server in {binary} (run without --no-install to build it)")
    home.mkdir(parents=True, exist_ok=True)
    sdists = sorted((home / "sdist").glob("llama_cpp_python-*.tar.gz"))
    if not sdists:
        print(f"  downloading the llama-cpp-python=={version} sdist into {home / 'sdist'} ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "--disable-pip-version-check", f"llama-cpp-python=={version}", "-d", str(home / "sdist")],
                       check=True)
        sdists = sorted((home / "sdist").glob("llama_cpp_python-*.tar.gz"))
    if not (src / "CMakeLists.txt").exists():
        shutil.rmtree(src, ignore_errors=True)
        prefix = sdists[-1].name.removesuffix(".tar.gz") + "/vendor/llama.cpp/"
        with tarfile.open(sdists[-1]) as tar:
            members = []
            for m in tar.getmembers():
                if m.name.startswith(prefix):
                    m.name = m.name[len(prefix):]
                    members.append(m)
            tar.extractall(src, members=members, filter="data")
    llama_cpp_build.patch_source(src)
    build = home / "build"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    log = home / "build.log"
    print(f"  building llama-server {version} (cmake, -j{jobs}; log: {log}); many minutes on 2 cores ...",
          flush=True)
    t0 = time.perf_counter()
    with open(log, "ab") as out:
        for cmd in (["cmake", "-S", str(src), "-B", str(build), *generator, *CMAKE_FLAGS],
                    ["cmake", "--build", str(build), "--target", "llama-server", f"-j{jobs}"]):
            out.write(f"$ {shlex.join(cmd)}\n".encode())
            out.flush()
            if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                raise RuntimeError(f"llama-server did not build: {log_tail(log)}")
    if not binary.exists():
        raise RuntimeError(f"the build made no {binary} (log: {log})")
    print(f"  llama-server built in {time.perf_counter() - t0:.0f}s: {binary}", flush=True)
    return binary


# -- the streaming client -----------------------------------------------------------------------------
@dataclass
class Rec:
    sent: float
    first: float | None = None
    chunks: list[float] = field(default_factory=list)  # arrival of each chunk that carried text
    usage: int | None = None  # usage.completion_tokens
    finish: str | None = None
    text: str = ""


def chunk_text(choice: dict[str, Any]) -> str:
    if "delta" in choice:
        return str((choice.get("delta") or {}).get("content") or "")
    return str(choice.get("text") or "")


async def stream_one(http: httpx.AsyncClient, url: str, body: dict[str, Any], rec: Rec, keep_text: bool = False) -> Rec:
    """One streamed request; fills ``rec`` as chunks arrive (so a cancelled one keeps what it got)."""
    async with http.stream("POST", url, json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {(await resp.aread())[:300]!r}")
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            obj = json.loads(data)
            if "error" in obj:
                raise RuntimeError(f"error in the stream: {obj['error']}")
            now = time.perf_counter()
            if obj.get("usage"):
                rec.usage = int(obj["usage"].get("completion_tokens", 0))
            for choice in obj.get("choices") or ():
                text = chunk_text(choice)
                if text:
                    if rec.first is None:
                        rec.first = now
                    rec.chunks.append(now)
                    if keep_text:
                        rec.text += text
                if choice.get("finish_reason"):
                    rec.finish = choice["finish_reason"]
    return rec


def completion_body(prompt: str, max_tokens: int, extra: dict[str, Any]) -> dict[str, Any]:
    return {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
            "stream_options": {"include_usage": True}, **extra}


@dataclass
class Level:
    tokens_s: float
    ttft_p50: float  # ms
    ttft_n: int
    finished: int
    mean_tokens: float  # per finished request (usage)
    short: int  # finished requests with fewer than max_tokens tokens
    ratio: float  # usage tokens / text chunks
    server_cpu: float  # % of one core
    client_cpu: float
    window: float  # seconds measured


async def run_level(url: str, concurrency: int, duration: float, warmup: float, max_tokens: int,
                    prompts: Iterator[str], extra: dict[str, Any], pid: int, min_ttft: int) -> Level:
    """``concurrency`` workers back to back; tokens counted in the window [start, stop), TTFT of the requests
    sent in it. The window lasts ``duration``, or longer until ``min_ttft`` requests were sent in it; the load
    stays on until each of those has its first token; then no new request is sent and every request in flight
    finishes (none is dropped: a disconnect mid-stream must not be what is measured), so the server is idle
    when this returns."""
    limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)
    recs: list[Rec] = []
    t_start = time.perf_counter() + warmup
    window = {"stop": t_start + duration}
    cpu: dict[str, float] = {}
    stopping = asyncio.Event()
    async with httpx.AsyncClient(timeout=httpx.Timeout(900, connect=10), limits=limits) as http:
        async def worker() -> None:
            while not stopping.is_set():
                rec = Rec(time.perf_counter())
                recs.append(rec)
                await stream_one(http, f"{url}/v1/completions", completion_body(next(prompts), max_tokens, extra), rec)

        def sent_in_window() -> list[Rec]:
            return [r for r in recs if t_start <= r.sent < window["stop"]]

        async def monitor() -> None:
            await asyncio.sleep(max(0.0, t_start - time.perf_counter()))
            cpu["server0"], cpu["client0"] = tree_cpu(pid), time.process_time()
            await asyncio.sleep(max(0.0, window["stop"] - time.perf_counter()))
            while len([r for r in recs if r.sent >= t_start]) < min_ttft:
                await asyncio.sleep(0.05)
            window["stop"] = time.perf_counter()
            cpu["server1"], cpu["client1"] = tree_cpu(pid), time.process_time()
            while any(r.first is None for r in sent_in_window()):
                await asyncio.sleep(0.05)
            stopping.set()

        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        watch = asyncio.create_task(monitor())
        try:
            for task in asyncio.as_completed([watch, *workers]):
                await task  # a worker's error ends the level with it
                if stopping.is_set():
                    break
            await asyncio.gather(*workers)
        finally:
            for task in (watch, *workers):
                task.cancel()
    t_stop = window["stop"]
    measured = t_stop - t_start
    finished = [r for r in recs if r.usage is not None and r.finish is not None]
    chunks = sum(len(r.chunks) for r in finished)
    ratio = sum(r.usage or 0 for r in finished) / chunks if chunks else 1.0
    in_window = sum(1 for r in recs for t in r.chunks if t_start <= t < t_stop)
    ttfts = sorted((r.first - r.sent) * 1000 for r in sent_in_window() if r.first is not None)
    return Level(tokens_s=in_window * ratio / measured, ttft_p50=statistics.median(ttfts) if ttfts else float("nan"),
                 ttft_n=len(ttfts), finished=len(finished),
                 mean_tokens=statistics.mean(r.usage or 0 for r in finished) if finished else float("nan"),
                 short=sum(1 for r in finished if (r.usage or 0) < max_tokens), ratio=ratio,
                 server_cpu=(cpu["server1"] - cpu["server0"]) / measured * 100,
                 client_cpu=(cpu["client1"] - cpu["client0"]) / measured * 100, window=measured)


async def check_answer(url: str, prompt: str, max_tokens: int, extra: dict[str, Any]) -> Rec:
    async with httpx.AsyncClient(timeout=300) as http:
        rec = Rec(time.perf_counter())
        return await stream_one(http, f"{url}/v1/completions", completion_body(prompt, max_tokens, extra), rec, True)


# -- batching: the servers ----------------------------------------------------------------------------
@dataclass
class Server:
    name: str
    proc: Proc
    url: str
    note: str
    failed: str | None = None


def make_servers(args: argparse.Namespace, logs: Path, model_path: Path) -> tuple[list[Server], dict[str, str]]:
    from servemesh.testing import free_port

    cache = Path(args.cache_dir).expanduser()
    install = not args.no_install
    servers: list[Server] = []
    info: dict[str, str] = {}
    for name in args.servers:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        try:
            if name == "today":
                tree = baseline_tree(args.baseline_ref, cache, install)
                info["today"] = f"{tree} ({args.baseline_ref})"
                cmd = [sys.executable, str(Path(__file__).resolve()), "--launch-threads", str(args.threads),
                       "on" if args.today_kernels == "same" and args.repack_on else "own", str(model_path), "--",
                       str(tree / "examples" / "llm" / "pipeline.py"), "--engine", "llamacpp", "--port", str(port)]
                servers.append(Server(name, Proc(name, cmd, servemesh_env(tree, logs), tree, f"{url}/ready"), url,
                                      f"pipeline.py of {args.baseline_ref}, llama.cpp threads {args.threads}, "
                                      f"kernels: {args.today_kernels}"))
            elif name == "new":
                tree = Path(args.servemesh_tree).resolve()
                info["new"] = f"{tree} ({git_head(tree)})"
                more = shlex.split(args.servemesh_args.format(slots=args.slots, threads=args.threads,
                                                              repack=args.repack))
                cmd = [sys.executable, str(tree / "examples" / "llm" / "pipeline.py"), "--engine", "llamacpp",
                       "--port", str(port), *more]
                servers.append(Server(name, Proc(name, cmd, servemesh_env(tree, logs), tree, f"{url}/ready"), url,
                                      f"pipeline.py of this tree {shlex.join(more)}"))
            elif name == "llama-server":
                binary = Path(args.llama_server) if args.llama_server else ensure_llama_server(
                    cache, llama_cpp_version(), install, args.build_jobs)
                info["llama-server"] = f"{binary}"
                cmd = [str(binary), "-m", str(model_path), "--alias", MODEL, "--host", "127.0.0.1", "--port", str(port),
                       "--parallel", str(args.slots), "-c", str(args.slots * args.ctx_per_slot),
                       "-t", str(args.threads), "-tb", str(args.threads),
                       *([] if args.repack_on else ["--no-repack"]), "-fa", "on", "--swa-full",
                       "--no-cache-prompt", "--cache-ram", "0", "-ctxcp", "0", "--no-webui",
                       *shlex.split(args.llama_server_args)]
                servers.append(Server(name, Proc(name, cmd, dict(os.environ), logs, f"{url}/health"), url,
                                      f"llama-server --parallel {args.slots}"))
            else:
                raise SystemExit(f"unknown server {name!r}")
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            print(f"  {name}: not available: {exc}", flush=True)
    return servers, info


def launch_with_threads(threads: int, kernels: str, model_path: str, script: list[str]) -> None:
    """``--launch-threads``: run a baseline pipeline.py whose engine takes no thread flag, with llama.cpp
    ``n_threads`` = ``n_threads_batch`` = ``threads`` (PYTHONPATH already points at that tree); ``kernels``
    ``on``: with llama.cpp's weight repacking (its own default, which that engine turned off), loading
    ``model_path`` (the file the other servers load: ``weights_for``)."""
    import runpy

    import servemesh.llm.engines.llamacpp as engine_module

    load = engine_module.load_llama

    def load_llama(path: Any, **kwargs: Any) -> Any:
        kwargs.update(n_threads=threads, n_threads_batch=threads)
        print(f"launcher: load_llama({path}, {kwargs}), repacking {kernels}", flush=True)
        if kernels == "on":
            import llama_cpp

            return llama_cpp.Llama(model_path=model_path, **kwargs)  # llama.cpp's defaults: repacking on
        return load(path, **kwargs)

    engine_module.load_llama = load_llama
    print(f"launcher: servemesh from {Path(engine_module.__file__).parents[3]}, llama.cpp threads {threads}",
          flush=True)
    sys.argv = script
    runpy.run_path(script[0], run_name="__main__")


def batching(args: argparse.Namespace) -> None:
    from servemesh.llm.model import resolve_model, weights_for

    logs = Path(args.logs or tempfile.mkdtemp(prefix="llm-batching-bench-"))
    logs.mkdir(parents=True, exist_ok=True)
    # the file every server loads: with repacking and AMX kernels, the model's Q5_0 weights widened to Q8_0
    model_path, _ = weights_for(resolve_model(MODEL), args.repack)
    print(f"machine: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"logs in {logs}\n  model: {model_path}\n  llama-cpp-python {llama_cpp_version()}; threads {args.threads}, "
          f"slots {args.slots}, max_tokens {args.max_tokens}, {args.duration:g}s windows after {args.warmup:g}s "
          f"of warm-up", flush=True)
    if args.threads >= (os.cpu_count() or 1) and os.getloadavg()[0] > 0.5:
        print(f"  WARNING: the machine is busy (load average {os.getloadavg()[0]:.1f}) and llama.cpp gets every core "
              f"({args.threads} threads): its threads wait on each other whenever one is descheduled, and tokens/s "
              "can drop tenfold. Measure on a quiet machine, or with fewer --threads.", flush=True)
    servers, info = make_servers(args, logs, model_path)
    for k, v in info.items():
        print(f"  {k}: {v}")
    for server in servers:
        print(f"  {server.name} ({server.note}): {shlex.join(server.proc.cmd)}")
    extra = {"ignore_eos": True} if args.ignore_eos else {}
    results: dict[tuple[str, int], list[Level]] = {}
    answers: dict[str, str] = {}
    for run in range(args.runs):
        order = servers if run % 2 == 0 else servers[::-1]
        for server in order:
            if server.failed:
                continue
            t0 = time.perf_counter()
            try:
                server.proc.start(logs, args.start_timeout)
            except Exception as exc:
                refused = server.proc.refused_flags()
                server.proc.stop()
                if refused and server.name == "new":
                    server.failed = (f"this tree's examples/llm/pipeline.py does not accept {args.servemesh_args!r} "
                                     f"yet (the batching engine has not landed?): {log_tail(server.proc.log, 3)}")
                else:
                    server.failed = f"did not start: {type(exc).__name__}: {exc} -- log: {log_tail(server.proc.log)}"
                print(f"  {server.name}: {server.failed}", flush=True)
                continue
            try:
                check = asyncio.run(check_answer(server.url, make_prompt(args.seed, -1), args.max_tokens, extra))
                answers.setdefault(server.name, check.text)
                print(f"  run {run + 1}: {server.name} up in {time.perf_counter() - t0:.1f}s; answer: {check.usage} "
                      f"tokens, finish {check.finish}, {check.text[:70]!r}", flush=True)
                for level, c in enumerate(args.concurrency):
                    # the same prompts, in the same order, for every server of a run
                    base = (run * 100 + level) * 1_000_000
                    prompts = (make_prompt(args.seed, base + i) for i in itertools.count())
                    r = asyncio.run(run_level(server.url, c, args.duration, args.warmup, args.max_tokens, prompts,
                                              extra, server.proc.proc.pid, args.min_ttft_samples))
                    results.setdefault((server.name, c), []).append(r)
                    print(f"  {server.name:<13} c={c:<3} {r.tokens_s:7.1f} tokens/s  TTFT p50 {r.ttft_p50:8.1f} ms "
                          f"(n={r.ttft_n})  {r.finished} finished, {r.mean_tokens:.1f} tokens each ({r.short} short)  "
                          f"tokens/chunk {r.ratio:.2f}  window {r.window:.1f}s  server CPU {r.server_cpu:.0f}%  "
                          f"client CPU {r.client_cpu:.0f}%",
                          flush=True)
            except Exception as exc:
                print(f"  {server.name}: failed: {type(exc).__name__}: {exc} -- log: {log_tail(server.proc.log)}",
                      flush=True)
            finally:
                server.proc.stop()
    report(args, servers, results, answers)


def report(args: argparse.Namespace, servers: list[Server], results: dict[tuple[str, int], list[Level]],
           answers: dict[str, str]) -> None:
    med = {k: (statistics.median(r.tokens_s for r in v), statistics.median(r.ttft_p50 for r in v))
           for k, v in results.items()}
    names = ["today", "new", "llama-server"]
    print(f"\ngemma-3-270m, {args.threads} threads, max_tokens {args.max_tokens}, slots {args.slots}; "
          f"median of {args.runs} run(s) of {args.duration:g}s per level\n")
    print("| c | " + " | ".join(f"{n} tokens/s | {n} TTFT p50 ms" for n in names)
          + " | new/today tokens/s | new/llama-server tokens/s | today/llama-server tokens/s |")
    print("|---:|" + "---:|" * (2 * len(names) + 3))
    for c in args.concurrency:
        cells = []
        for n in names:
            m = med.get((n, c))
            cells += [f"{m[0]:.1f}", f"{m[1]:.0f}"] if m else ["-", "-"]

        def ratio(a: str, b: str, c: int = c) -> str:
            x, y = med.get((a, c)), med.get((b, c))
            return f"{x[0] / y[0]:.2f}x" if x and y and y[0] else "-"

        print(f"| {c} | " + " | ".join(cells) + f" | {ratio('new', 'today')} | {ratio('new', 'llama-server')} | "
              f"{ratio('today', 'llama-server')} |")
    for server in servers:
        if server.failed:
            print(f"\n{server.name}: {server.failed}")
    texts = {k: v for k, v in answers.items() if v}
    if len(texts) > 1:
        same = len(set(texts.values())) == 1
        print(f"\ngreedy answers to the check prompt: {'identical' if same else 'DIFFERENT'} across "
              f"{', '.join(texts)}" + ("" if same else "".join(f"\n  {k}: {v[:120]!r}" for k, v in texts.items())))
    print("\n" + verdict(med))
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (on {os.cpu_count()} CPUs)")


def verdict(med: dict[tuple[str, int], tuple[float, float]]) -> str:
    """The issue's targets: at c=8 new >= 3x today and >= 0.9x llama-server (tokens/s); at c=1 within 5% of today."""
    parts = []
    new8, today8, ls8, new1, today1 = (med.get(k) for k in (("new", 8), ("today", 8), ("llama-server", 8),
                                                            ("new", 1), ("today", 1)))
    if new8 and today8:
        x = new8[0] / today8[0]
        parts.append(f"c=8 new/today {x:.2f}x (target >= 3x: {'met' if x >= 3 else 'MISSED'})")
    if new8 and ls8:
        x = new8[0] / ls8[0]
        parts.append(f"c=8 new/llama-server {x:.2f}x (target >= 0.9x: {'met' if x >= 0.9 else 'MISSED'})")
    if new1 and today1:
        x = new1[0] / today1[0]
        parts.append(f"c=1 new/today {x:.2f}x (target within 5%: {'met' if x >= 0.95 else 'MISSED'})")
    if not parts:
        return "verdict: - (needs the new engine beside today's and llama-server at c=1 and c=8)"
    return "verdict: " + "; ".join(parts)


# -- --kv: KV-aware routing -----------------------------------------------------------------------------
SYSTEM_PROMPT = (
    "You are Harbour, the assistant of the Northwind Ferry Company. You answer questions from travellers "
    "about timetables, tickets, luggage, pets, bicycles, accessibility and the islands the ferries serve. "
    "Rules: be brief and friendly; answer in plain sentences, never in lists or tables; if you do not know "
    "an answer, say so and suggest the ticket office at the main pier, which is open from six in the morning "
    "until ten at night. Facts you may use: ferries leave the main pier every forty minutes from seven in "
    "the morning; the last ferry back from the outer islands leaves at nine in the evening; a single ticket "
    "costs eight euros for adults and four euros for children under twelve; children under four travel for "
    "free; a day pass costs twenty euros and is valid on every line; bicycles cost two euros extra and must "
    "be booked at least one hour before departure; dogs travel for free on a leash, other pets in a closed "
    "carrier; each passenger may bring two pieces of luggage, heavier items go in the cargo room; every "
    "ferry has a ramp and an accessible toilet, and the crew helps passengers who ask; in storms above force "
    "seven the company cancels crossings and refunds tickets in full; the islands served are Gull Rock, "
    "Little Skerry, Marram, Holm and the Saltings, and only Marram and Holm have hotels; the cafe on board "
    "sells coffee, tea, sandwiches and local cheese; the company's lost property desk keeps items for thirty "
    "days. Always end with a short wish for a pleasant crossing.")
TOPICS = ["bringing a bicycle to Marram", "the last ferry from Holm", "a day pass for a family of four",
          "travelling with a large dog", "a wheelchair on the ferry", "what happens in a storm",
          "hotels on the islands",
          "lost sunglasses on yesterday's crossing", "the price of a child's ticket", "food on board",
          "a surfboard as luggage", "the first ferry in the morning", "visiting Gull Rock for birdwatching",
          "a cat in a carrier", "booking for a school class", "the ticket office hours"]
FOLLOW_UPS = ["Thanks. And how much would that cost?", "Can you say that more briefly?", "What if I am late?",
              "Is there anything else I should know?", "And on the way back?", "Does that apply on weekends too?"]


ISLANDS = ["Gull Rock", "Little Skerry", "Marram", "Holm", "the Saltings", "the main pier"]
COMPANY = ["my two children", "my elderly mother", "a group of six friends", "my dog", "nobody", "my colleague",
           "a school class of twenty", "my partner and our bicycles"]
LUGGAGE = ["a large suitcase", "two bicycles", "a surfboard", "a pram", "camping gear", "a cello in a hard case",
           "a cool box of fish", "nothing but a backpack"]


def conversation_turn(seed: int, conversation: int, turn: int) -> str:
    """The first turn carries the conversation's own itinerary (~250 tokens, distinct per conversation: what
    a router that knows where the conversation was served saves prefilling again); later turns are short."""
    r = random.Random(seed * 7919 + conversation * 101 + turn)
    if turn > 0:
        return r.choice(FOLLOW_UPS)
    legs = []
    for day in range(1, 9):
        a, b = r.sample(ISLANDS, 2)
        legs.append(f"On day {day} I take the {r.randint(7, 20)}:{r.choice(['00', '20', '40'])} ferry from {a} to "
                    f"{b} with {r.choice(COMPANY)}, bringing {r.choice(LUGGAGE)}.")
    return (f"Hello, my name is {r.choice(NAMES)} and I have a question about {TOPICS[conversation % len(TOPICS)]}. "
            f"Here is my booking reference {r.randint(100000, 999999)} and my plan for the trip: " + " ".join(legs)
            + " What do you think of this plan?")


async def instance_stats(settings: Any, path: str = "inference.engine.stats",
                         wait: float = 10) -> dict[str, dict[str, Any]]:
    """Each instance's answer to ``{}`` at ``path`` (a ``stats`` endpoint), by instance id (hex)."""
    from servemesh.runtime import DistributedRuntime

    async with DistributedRuntime(settings) as runtime:
        client = await runtime.endpoint(path).client()
        with contextlib.suppress(Exception):
            await client.wait_for_instances(wait)
        return {f"{i:x}": await client.one({}, i) for i in sorted(client.instance_ids())}


async def wait_registered(settings: Any, path: str, count: int, timeout: float, procs: list[Proc]) -> None:
    """Until ``count`` instances serve ``path`` (in etcd); fails at once if one of ``procs`` exits."""
    from servemesh.runtime import DistributedRuntime

    async with DistributedRuntime(settings) as runtime:
        client = await runtime.endpoint(path).client()
        deadline = time.monotonic() + timeout
        while len(client.instance_ids()) < count:
            for p in procs:
                if p.proc is not None and p.proc.poll() is not None:
                    raise ProcessExited(p)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} instance(s) of {path} not registered after {timeout}s")
            await asyncio.sleep(0.1)


class ProcessExited(RuntimeError):
    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        code = proc.proc.returncode if proc.proc is not None else "?"
        super().__init__(f"{proc.name} exited with {code}: {log_tail(proc.log)}")


@dataclass
class Turn:
    conversation: int
    turn: int
    ttft: float  # ms
    total: float
    tokens: int | None


async def chat_workload(url: str, args: argparse.Namespace, model: str) -> tuple[list[Turn], float]:
    sem = asyncio.Semaphore(args.kv_concurrency)
    turns: list[Turn] = []
    limits = httpx.Limits(max_connections=args.kv_concurrency + 2)

    async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10), limits=limits) as http:
        async def conversation(k: int) -> None:
            await asyncio.sleep(k * args.kv_arrival)
            async with sem:
                messages = [{"role": "system", "content": SYSTEM_PROMPT}]
                for t in range(args.turns):
                    messages.append({"role": "user", "content": conversation_turn(args.seed, k, t)})
                    body = {"model": model, "messages": messages, "max_tokens": args.kv_max_tokens,
                            "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
                    rec = await stream_one(http, f"{url}/v1/chat/completions", body, Rec(time.perf_counter()), True)
                    done = time.perf_counter()
                    first = rec.first if rec.first is not None else done
                    turns.append(Turn(k, t, (first - rec.sent) * 1000, (done - rec.sent) * 1000, rec.usage))
                    messages.append({"role": "assistant", "content": rec.text})

        t0 = time.perf_counter()
        await asyncio.gather(*(conversation(k) for k in range(args.conversations)))
        return turns, time.perf_counter() - t0


def numeric_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    return {k: v - before.get(k, 0) for k, v in after.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def prefill_computed(total: dict[str, float]) -> tuple[str, float | None]:
    """(how, prefill tokens computed) from the engines' summed stats, from whatever fields they have."""
    for key in ("prefill_tokens", "computed_prompt_tokens", "prompt_tokens_computed", "prefill_computed"):
        if key in total:
            return key, total[key]
    prompt = next((k for k in ("prompt_tokens", "prompt_tokens_total") if k in total), None)
    cached = next((k for k in total if "cached" in k or "prefix_hit_tokens" in k or k == "reused_tokens"), None)
    if prompt and cached:
        return f"{prompt} - {cached}", total[prompt] - total[cached]
    if prompt:
        return f"{prompt} (no cached count)", total[prompt]
    return "no prompt-token fields in stats", None


def kv_topology(args: argparse.Namespace, policy: str, logs: Path, env: dict[str, str], tree: Path,
                port: int) -> list[Proc]:
    py = [sys.executable]
    ex = tree / "examples" / "llm"
    mock = args.engine == "mock"
    model = "mock" if mock else MODEL
    engine_args = shlex.split(args.mock_args if mock else args.engine_args.format(threads=args.kv_threads))
    engines = [Proc(f"engine{i}-{policy}", [*py, str(ex / "engine.py"), "--engine", args.engine, "--model", model,
                                            *engine_args], env, tree) for i in range(2)]
    router = Proc(f"router-{policy}", [*py, str(ex / "router.py"), "--model", model, "--policy", policy], env, tree)
    via = (["--engine-path", "inference.router.generate"] if "--engine-path" in (ex / "processor.py").read_text()
           else ["--via-router"])
    processor = Proc(f"processor-{policy}", [*py, str(ex / "processor.py"), "--engine", args.engine, "--model", model,
                                             *via], env, tree)
    frontend = Proc(f"frontend-{policy}", [*py, str(ex / "frontend.py"), "--port", str(port)], env, tree,
                    f"http://127.0.0.1:{port}/ready")
    return [*engines, router, processor, frontend]


def kv_run(args: argparse.Namespace, policy: str, logs: Path, etcd_url: str, nats_url: str) -> dict[str, Any]:
    from servemesh.config import Settings
    from servemesh.testing import free_port

    tree = Path(args.servemesh_tree).resolve()
    extra = {"SERVEMESH_ETCD": etcd_url, "SERVEMESH_NATS": nats_url}
    if args.transport:
        extra["SERVEMESH_TRANSPORT"] = args.transport
    env = servemesh_env(tree, logs, **extra)
    settings = Settings.from_env(env)
    port = free_port()
    procs = kv_topology(args, policy, logs, env, tree, port)
    engines, router, rest = procs[:2], procs[2], procs[3:]
    try:
        try:
            for p in engines:
                p.start(logs, args.start_timeout)
            asyncio.run(wait_registered(settings, "inference.engine.generate", 2, args.start_timeout, engines))
            router.start(logs, args.start_timeout)
            asyncio.run(wait_registered(settings, "inference.router.generate", 1, args.start_timeout, [router]))
            for p in rest:
                p.start(logs, args.start_timeout)
        except ProcessExited as exc:
            if exc.proc is router and router.refused_flags():
                raise SystemExit(f"the router refuses --policy {policy} (KV-aware routing not in this tree yet?): "
                                 f"{log_tail(router.log, 2)}") from None
            if exc.proc.refused_flags():
                raise SystemExit(f"{exc.proc.name} refuses its flags ({shlex.join(exc.proc.cmd[2:])}): "
                                 f"{log_tail(exc.proc.log, 2)}") from None
            raise
        before = asyncio.run(instance_stats(settings))
        model = "mock" if args.engine == "mock" else MODEL
        turns, wall = asyncio.run(chat_workload(f"http://127.0.0.1:{port}", args, model))
        after = asyncio.run(instance_stats(settings))
        routers = asyncio.run(instance_stats(settings, "inference.router.stats", 1))  # where the router has one
    except SystemExit:
        raise
    except Exception as exc:
        bad = next((p for p in procs if p.proc is not None and p.proc.poll() is not None), None)
        where = f" ({bad.name} exited: {log_tail(bad.log)})" if bad else ""
        raise RuntimeError(f"{type(exc).__name__}: {exc}{where}") from None
    finally:
        for p in reversed(procs):
            p.stop()
    per_engine = {i: numeric_delta(before.get(i, {}), s) for i, s in after.items()}
    total: dict[str, float] = {}
    for d in per_engine.values():
        for k, v in d.items():
            total[k] = total.get(k, 0) + v
    return {"turns": turns, "wall": wall, "per_engine": per_engine, "raw_after": after, "total": total,
            "router": next(iter(routers.values()), None)}


def kv(args: argparse.Namespace) -> None:
    from servemesh.testing import EtcdServer, NatsServer

    logs = Path(args.logs or tempfile.mkdtemp(prefix="kv-routing-bench-"))
    logs.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"logs in {logs}\n  engine {args.engine} x 2 "
          f"({args.mock_args if args.engine == 'mock' else args.engine_args.format(threads=args.kv_threads)}); "
          f"{args.conversations} conversations x {args.turns} turns, one starting every {args.kv_arrival}s, "
          f"{args.kv_concurrency} at a time, max_tokens "
          f"{args.kv_max_tokens}; tree {Path(args.servemesh_tree).resolve()} ({git_head(Path(args.servemesh_tree))})",
          flush=True)
    results: dict[str, list[dict[str, Any]]] = {}
    with EtcdServer(str(logs / "etcd")) as etcd, NatsServer(str(logs / "nats")) as nats:
        for run in range(args.runs):
            order = args.policies if run % 2 == 0 else args.policies[::-1]
            for policy in order:
                try:
                    r = kv_run(args, policy, logs, etcd.url, nats.url)
                except RuntimeError as exc:
                    print(f"  {policy}: failed: {exc}", flush=True)
                    continue
                results.setdefault(policy, []).append(r)
                how, computed = prefill_computed(r["total"])
                q = ttft_quantiles(r["turns"])
                print(f"  run {run + 1}: {policy:<12} TTFT p50 {q['p50']:8.1f} ms, p90 {q['p90']:8.1f} ms, turns 2+ "
                      f"p50 {q['later']:8.1f} ms; wall {r['wall']:.1f}s; prefill computed "
                      f"{'?' if computed is None else f'{computed:.0f}'} ({how})", flush=True)
                for i, d in r["per_engine"].items():
                    print(f"      engine {i}: {json.dumps(d, default=str)}", flush=True)
                if r["router"] is not None:
                    print(f"      router: {json.dumps(r['router'], default=str)[:600]}", flush=True)
    if not results:
        print("\nno policy ran")
        return
    print(f"\nKV routing: {args.engine} engines x 2, {args.conversations} conversations x {args.turns} turns, "
          f"one starting every {args.kv_arrival}s, {args.kv_concurrency} at a time; median of {args.runs} run(s)\n")
    print("| policy | TTFT p50 ms | TTFT p90 ms | TTFT p50 turns 2+ ms | wall s | prefill tokens computed "
          "| engines' stats (summed) |")
    print("|---|---:|---:|---:|---:|---:|---|")
    med: dict[str, float] = {}
    for policy in args.policies:
        rs = results.get(policy)
        if not rs:
            print(f"| {policy} | - | - | - | - | - | did not run |")
            continue
        qs = [ttft_quantiles(r["turns"]) for r in rs]
        m = {k: statistics.median(q[k] for q in qs) for k in qs[0]}
        med[policy] = m["p50"]
        computed = [c for r in rs if (c := prefill_computed(r["total"])[1]) is not None]
        summed = {k: round(statistics.median(r["total"].get(k, 0) for r in rs)) for k in rs[0]["total"]}
        print(f"| {policy} | {m['p50']:.0f} | {m['p90']:.0f} | {m['later']:.0f} | "
              f"{statistics.median(r['wall'] for r in rs):.1f} | "
              f"{f'{statistics.median(computed):.0f}' if computed else '?'} | {json.dumps(summed)} |")
    if "kv" in med and "round_robin" in med:
        x = med["round_robin"] / med["kv"]
        print(f"\nverdict: round_robin TTFT p50 / kv TTFT p50 = {x:.2f}x "
              f"(target >= 2x: {'met' if x >= 2 else 'MISSED'})")


def ttft_quantiles(turns: list[Turn]) -> dict[str, float]:
    ttfts = sorted(t.ttft for t in turns)
    later = [t.ttft for t in turns if t.turn > 0]
    return {"p50": statistics.median(ttfts), "p90": ttfts[min(len(ttfts) - 1, int(len(ttfts) * 0.9))],
            "later": statistics.median(later) if later else float("nan")}


def main() -> None:
    if len(sys.argv) > 4 and sys.argv[1] == "--launch-threads":  # the baseline's launcher (see the docstring)
        launch_with_threads(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[sys.argv.index("--") + 1:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds counted per level and run [30]")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load before each window [5]")
    parser.add_argument("--runs", type=int, default=2, help="runs (server order reversed every other run) [2]")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--servers", nargs="+", default=["today", "new", "llama-server"],
                        choices=["today", "new", "llama-server"])
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads, every server [2]")
    parser.add_argument("--slots", type=int, default=None, help="parallel sequences (new, llama-server) "
                        "[the highest concurrency]")
    parser.add_argument("--ctx-per-slot", type=int, default=2048, help="llama-server context per slot [2048, "
                        "today's engine's n_ctx]")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--min-ttft-samples", type=int, default=8,
                        help="a window lasts until at least this many requests were sent in it [8]")
    parser.add_argument("--ignore-eos", action="store_true", help="send ignore_eos: true (llama-server honours it)")
    parser.add_argument("--seed", type=int, default=11, help="the prompts' seed [11]")
    parser.add_argument("--baseline-ref", default=BASELINE_REF, help="today's engine: this commit [%(default)s]")
    parser.add_argument("--servemesh-tree", default=str(ROOT), help="the new engine's tree [%(default)s]")
    parser.add_argument("--servemesh-args", default="--slots {slots} --threads {threads} --repack {repack}",
                        help="added to the new pipeline.py ({slots} {threads} {repack} filled in) [%(default)s]")
    parser.add_argument("--repack", choices=["auto", "on", "off"], default="auto",
                        help="llama.cpp's weight repacking (AMX kernels) for every server [auto: as servemesh's "
                        "engine decides]")
    parser.add_argument("--today-kernels", choices=["same", "own"], default="same",
                        help="today's engine with the others' kernels, or as it was (repacking off) [same]")
    parser.add_argument("--llama-server", default=None, help="a llama-server binary instead of the cached build")
    parser.add_argument("--llama-server-args", default="", help="added to llama-server's command line")
    parser.add_argument("--build-jobs", type=int, default=os.cpu_count() or 2, help="cmake -j [the CPUs]")
    parser.add_argument("--cache-dir", default=str(CACHE), help="builds and trees [%(default)s]")
    parser.add_argument("--no-install", action="store_true", help="never download or build")
    parser.add_argument("--start-timeout", type=float, default=180)
    parser.add_argument("--logs", default=None, help="folder for the servers' output [a temporary one]")
    kv_opts = parser.add_argument_group("--kv")
    kv_opts.add_argument("--kv", action="store_true", help="the KV routing benchmark instead")
    kv_opts.add_argument("--engine", choices=["llamacpp", "mock"], default="llamacpp")
    kv_opts.add_argument("--policies", nargs="+", default=["kv", "round_robin"])
    kv_opts.add_argument("--conversations", type=int, default=16)
    kv_opts.add_argument("--turns", type=int, default=4)
    kv_opts.add_argument("--kv-concurrency", type=int, default=16, help="conversations at a time [16]")
    kv_opts.add_argument("--kv-arrival", type=float, default=1.0,
                         help="seconds between the starts of two conversations [1.0]")
    kv_opts.add_argument("--kv-max-tokens", type=int, default=48)
    kv_opts.add_argument("--kv-threads", type=int, default=1, help="llama.cpp threads per engine [1: two engines "
                         "on 2 cores]")
    kv_opts.add_argument("--engine-args", default="--threads {threads} --slots 8",
                         help="added to each llamacpp engine.py ({threads} filled in) [%(default)s]")
    kv_opts.add_argument("--mock-args", default="--kv-blocks 2048 --prefill-s-per-token 0.0002",
                         help="added to each mock engine.py [%(default)s]")
    kv_opts.add_argument("--transport", default=None, help="SERVEMESH_TRANSPORT for the topology [tcp]")
    args = parser.parse_args()
    if args.slots is None:
        args.slots = max(args.concurrency)
    from servemesh.llm.model import extra_buffers

    args.repack_on = extra_buffers(args.repack)
    if args.kv:
        kv(args)
    else:
        batching(args)


if __name__ == "__main__":
    main()
