"""The two UIs, for real: kedro viz in a headless Chromium, offline; mlflow ui over its REST API.

* ``test_kedro_viz_renders_offline_in_chromium``: ``llama2-pipeline viz-build`` (``kedro viz build``
  without its Google Fonts links) in a throw-away copy, the
  static site served on 127.0.0.1 (http.server), opened in headless Chromium. The rendered DOM
  must show every pipeline of the recipe (the pipeline selector, and their nodes in the flowchart:
  the RLHF rounds as the collapsed namespaces ``rlhf_v1``/``rlhf_v2``); a screenshot is saved
  under the test's tmp_path. Nothing may leave the machine: Chromium sends every non-loopback
  request to a recording proxy that refuses all of them, cannot resolve any name but loopback
  (``--host-resolver-rules``), and its netlog must show no TCP connection, UDP datagram or DNS
  lookup for anything but 127.0.0.1, and the *page* (requests attributed via the netlog) must not
  have tried to fetch anything from outside.
* ``test_mlflow_ui_shows_every_stage``: the Makefile's ``mlflow-ui`` command (read with
  ``make -n``) started on a free 127.0.0.1 port over the sqlite store of a project where
  ``dvc repro`` ran every stage (fixture ``smoke_repro``); its REST API must list a finished run
  per DVC stage (tags ``dvc_stage``, ``pipelines``), and the RLHF rounds grouped under one
  ``dvc repro`` parent run with the same evaluation metrics. The server is stopped (its whole
  process group) even when the test fails.

Chromium: the Debian package ``chromium`` (``make test`` installs it when it can); set
``CHROMIUM=/path/to/chrome`` to use another build. Missing, the test fails (it is not skipped).
"""

from __future__ import annotations

import functools
import html.parser
import http.server
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tests.conftest import BIN, env, make_project_copy, run

PIPELINES = ("world", "data_processing", "tokenizer", "pretrain", "sft", "reward", "rlhf", "gatt")
ROUNDS = ("rlhf_v1", "rlhf_v2")  # the RLHF rounds: namespaces of the rlhf pipeline, one DVC stage each
STAGES = ("world", "data_processing", "tokenizer_train", "tokenizer_encode", "pretrain", "sft", "reward",
          "rlhf@v1", "rlhf@v2", "gatt")
ROUND_METRICS = {"policy_helpfulness", "policy_safety", "kl_to_sft", "win_rate_vs_sft"}
# The hosts the kedro-viz page itself may try to reach: none. kedro viz build's index.html links a
# Google Fonts stylesheet (+ preconnect hints); `llama2-pipeline viz-build` removes them.
KNOWN_VIZ_EXTERNAL: set[str] = set()


# --------------------------------------------------------------------------------------------------
# helpers


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _ThreadingTCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


class RecordingProxy:
    """An HTTP proxy on 127.0.0.1 that records every request line (``CONNECT host:443``,
    ``GET http://...``) and refuses it with 403: nothing it receives goes any further."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        lock = threading.Lock()
        records = self.requests

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline(65536).decode("latin-1").strip()
                if line:
                    with lock:
                        records.append(line)
                self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

        self._server = _ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]

    def hosts(self) -> set[str]:
        out = set()
        for line in self.requests:
            parts = line.split()
            if len(parts) < 2:
                continue
            target = parts[1]
            host = target.rsplit(":", 1)[0] if parts[0] == "CONNECT" else urllib.parse.urlsplit(target).hostname
            out.add((host or target).strip("[]").lower())
        return out

    def __enter__(self) -> RecordingProxy:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def _serve_directory(folder: Path):
    """Serve ``folder`` on 127.0.0.1:<free port>; yields (base url, list of request lines served)."""
    served: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, fmt: str, *args) -> None:  # keep pytest's output clean, remember the paths
            served.append(self.requestline)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _chromium() -> str:
    candidates = [os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome", "google-chrome-stable"]
    for name in filter(None, candidates):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("chromium is missing: this test needs a headless Chromium. Install the Debian package "
                "(`sudo apt-get install chromium`; `make test` does it when it can) or set CHROMIUM=/path/to/chrome.")


def _load_netlog(path: Path) -> dict:
    text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError:  # a netlog Chromium could not close (it was killed): end its event list
        return json.loads(text.rstrip().rstrip(",") + "]}")


def _netlog_findings(netlog: dict, page_site: str) -> tuple[list[str], set[str]]:
    """(traffic to anything but loopback, external hosts the page at ``page_site`` tried to reach).

    Leaks: a TCP connection attempt, a UDP datagram sent or a DNS lookup (system or built-in resolver)
    for a non-loopback address. (A connected-but-silent UDP socket is how Chromium probes its local
    address and IPv6 reachability: it sends nothing, so only datagrams count.)
    The page's hosts: URL requests whose initiator or isolation key is the page's site, and sockets
    (incl. preconnects) whose pool group is keyed to the page's site.
    """
    names = {v: k for k, v in netlog["constants"]["logEventTypes"].items()}
    leaks: list[str] = []
    page_hosts: set[str] = set()
    udp_external: set[int] = set()
    group_re = re.compile(r"(?:^|/)(?:https?|wss?)://\[?([^/\s<>\]]+?)\]?(?::\d+)?/?\s*<([^>]*)>")
    events = netlog["events"]
    for e in events:
        name = names.get(e["type"], str(e["type"]))
        p = e.get("params") or {}
        if name in ("TCP_CONNECT_ATTEMPT", "TCP_CONNECT"):
            addresses = list(p.get("address_list", [])) + [p[k] for k in ("address", "remote_address") if k in p]
            for a in addresses:
                if not _is_loopback(a.rsplit(":", 1)[0]):
                    leaks.append(f"{name} {a}")
        elif name == "UDP_CONNECT" and "address" in p and not _is_loopback(p["address"].rsplit(":", 1)[0]):
            udp_external.add(e["source"]["id"])
        elif name in ("HOST_RESOLVER_SYSTEM_TASK", "HOST_RESOLVER_DNS_TASK"):
            leaks.append(f"{name} {json.dumps(p)[:200]}")
        if name == "URL_REQUEST_START_JOB" and "url" in p:
            keys = f"{p.get('initiator', '')} {p.get('network_isolation_key', '')}"
            host = urllib.parse.urlsplit(p["url"]).hostname or ""
            if page_site in keys and host and not _is_loopback(host):
                page_hosts.add(host.lower())
        if isinstance(p.get("group_id"), str):
            m = group_re.search(p["group_id"])
            if m and page_site in m.group(2) and not _is_loopback(m.group(1)):
                page_hosts.add(m.group(1).lower())
    for e in events:
        if names.get(e["type"]) == "UDP_BYTES_SENT" and e["source"]["id"] in udp_external:
            leaks.append(f"UDP_BYTES_SENT {json.dumps(e.get('params') or {})[:200]}")
    return leaks, page_hosts


class _FlowchartParser(html.parser.HTMLParser):
    """From kedro-viz's rendered DOM: the pipeline selector's options, the flowchart's nodes
    (``<g data-node-type=... data-node-fullname=...>``) and the node list's tree rows."""

    def __init__(self) -> None:
        super().__init__()
        self.pipeline_options: set[str] = set()
        self.graph_nodes: set[tuple[str, str]] = set()
        self.tree_rows: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        classes = a.get("class", "").split()
        if "menu-option__content" in classes and a.get("title"):
            self.pipeline_options.add(a["title"])
        if tag == "g" and "pipeline-node" in classes and a.get("data-node-fullname"):
            self.graph_nodes.add((a.get("data-node-type", ""), a["data-node-fullname"]))
        test_id = a.get("data-test", "")
        if test_id.startswith("node-list-tree-item--row--"):
            self.tree_rows.add(test_id.removeprefix("node-list-tree-item--row--"))


def _expected_flowchart(build: Path, pipeline: str) -> set[tuple[str, str]]:
    """What the default (whole-recipe) flowchart must show for ``pipeline``: its top-level task nodes,
    and the collapsed namespace of each namespaced node (as kedro-viz exported them)."""
    data = json.loads((build / "api" / "pipelines" / pipeline).read_text())
    out = set()
    for node in data["nodes"]:
        if node["type"] != "task":
            continue
        namespaces = node.get("modular_pipelines") or []
        out.add(("modularPipeline", namespaces[0].split(".")[0]) if namespaces else ("task", node["name"]))
    return out


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


# --------------------------------------------------------------------------------------------------
# kedro viz


@pytest.mark.slow
def test_kedro_viz_renders_offline_in_chromium(tmp_path: Path) -> None:
    chromium = _chromium()
    t0 = time.monotonic()
    project = make_project_copy(tmp_path / "proj", "smoke")
    p = run(["llama2-pipeline", "viz-build"], project, timeout=600)  # kedro viz build, made offline
    build = project / "build"
    assert (build / "index.html").is_file() and (build / "api" / "main").is_file(), \
        f"kedro viz build wrote no site:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    t_build = time.monotonic() - t0

    # the built site's own references to other hosts: none (the font links removed), no telemetry script
    index = (build / "index.html").read_text()
    refs = set(re.findall(r"""(?:href|src)\s*=\s*["'](?:https?:)?//([^/"']+)""", index))
    assert refs <= KNOWN_VIZ_EXTERNAL, f"kedro-viz's index.html references other hosts: {refs}"
    assert "heapanalytics" not in index, "kedro-viz injected its telemetry script (DO_NOT_TRACK ignored?)"

    dom_file, shot, netlog_file = tmp_path / "dom.html", tmp_path / "kedro_viz.png", tmp_path / "netlog.json"
    with RecordingProxy() as proxy, _serve_directory(build) as (url, served):
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
               "--disable-component-update", "--disable-sync", "--disable-default-apps", "--no-pings",
               "--disable-domain-reliability", "--disable-client-side-phishing-detection", "--disable-breakpad",
               # Chromium's own page-keyed lookups (autofill queries forms on the page to Google; hints)
               "--disable-features=AutofillServerCommunication,OptimizationHints,Translate,MediaRouter",
               f"--user-data-dir={tmp_path / 'chromium-profile'}",
               # every non-loopback request goes to the refusing proxy (loopback bypasses it by default),
               # and no name but loopback resolves, should anything try to bypass the proxy
               f"--proxy-server=http://127.0.0.1:{proxy.port}",
               "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
               f"--log-net-log={netlog_file}", "--net-log-capture-mode=Default",
               "--window-size=1600,1000", f"--screenshot={shot}",
               "--virtual-time-budget=15000",  # let the app fetch its api/ files and lay the graph out
               "--dump-dom", url + "/"]
        t1 = time.monotonic()
        try:
            browser = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=tmp_path, env=env())
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"chromium did not finish in 180 s (is the page waiting on a network request?): {exc}")
        t_browser = time.monotonic() - t1
    dom_file.write_text(browser.stdout)
    assert browser.returncode == 0 and browser.stdout.strip(), \
        f"chromium failed ({browser.returncode}):\n{browser.stderr[-4000:]}"
    print(f"kedro viz build {t_build:.1f} s, chromium {t_browser:.1f} s; screenshot {shot}")

    # the app loaded its data from our server
    paths = {line.split()[1] for line in served if len(line.split()) > 1}
    assert {"/", "/api/main"} <= paths, f"the page did not load its graph data: {sorted(paths)}"

    # the rendered page shows the recipe: every pipeline in the selector, its nodes in the flowchart,
    # the RLHF rounds as collapsed (modular-pipeline) namespaces in the flowchart and the node tree
    page = _FlowchartParser()
    page.feed(browser.stdout)
    missing_pipelines = set(PIPELINES) - page.pipeline_options
    assert not missing_pipelines, f"pipelines missing from kedro viz's selector: {missing_pipelines}"
    assert set(ROUNDS) <= page.pipeline_options, f"RLHF rounds not selectable: {page.pipeline_options}"
    for name in ROUNDS:
        assert ("modularPipeline", name) in page.graph_nodes, f"{name} is no collapsed namespace in the flowchart"
        assert name in page.tree_rows, f"{name} missing from the node tree"
    for pipeline in PIPELINES:
        expected = _expected_flowchart(build, pipeline)
        assert expected, f"kedro viz exported no nodes for pipeline {pipeline}"
        missing = expected - page.graph_nodes
        assert not missing, f"pipeline {pipeline}: not rendered in the flowchart: {sorted(missing)}"
    assert {("modularPipeline", r) for r in ROUNDS} <= _expected_flowchart(build, "rlhf")

    # the screenshot: full size, and a drawn page (not a blank or single-colour error page)
    assert _png_size(shot) == (1600, 1000)
    assert shot.stat().st_size > 20_000, f"screenshot suspiciously small: {shot.stat().st_size} bytes"
    from PIL import Image

    with Image.open(shot) as im:
        colours = im.convert("RGB").getcolors(maxcolors=1 << 24)
    top_share = max(n for n, _ in colours) / (1600 * 1000)
    assert len(colours) > 100 and top_share < 0.97, f"screenshot looks blank: {len(colours)} colours, {top_share:.1%}"

    # offline: nothing left the machine, and the page itself only tried the known font stylesheet
    leaks, page_hosts = _netlog_findings(_load_netlog(netlog_file), "http://127.0.0.1")
    assert not leaks, f"chromium reached beyond loopback: {leaks[:20]}"
    unexpected = page_hosts - KNOWN_VIZ_EXTERNAL
    assert not unexpected, f"the kedro viz page tried to reach {sorted(unexpected)} (all: {sorted(page_hosts)})"
    assert page_hosts <= proxy.hosts(), \
        f"page requests that did not end at the refusing proxy: {sorted(page_hosts - proxy.hosts())}"
    if page_hosts:
        print(f"the page tried (refused by the proxy): {sorted(page_hosts)}; Chromium's own background "
              f"requests (refused too): {sorted(proxy.hosts() - page_hosts)}")


# --------------------------------------------------------------------------------------------------
# mlflow ui


def _makefile_mlflow_ui(project: Path, port: int) -> str:
    """The command ``make mlflow-ui`` runs (not remaking the venv), with this test's venv and port."""
    if not shutil.which("make"):
        pytest.fail("`make` is missing: this test reads the mlflow-ui command from the Makefile")
    p = run(["make", "-s", "-n", "-o", "venv", "-o", ".venv/.installed", "mlflow-ui", f"BIN={BIN}",
             f"MLFLOW_PORT={port}", "MLFLOW_UI_ARGS=--workers 1"], project, timeout=60)
    lines = [ln for ln in p.stdout.splitlines() if " ui " in f"{ln} " or ln.rstrip().endswith(" ui")]
    assert len(lines) == 1, f"`make -n mlflow-ui` printed no single mlflow ui command:\n{p.stdout}"
    cmd = lines[0]
    for flag in ("--backend-store-uri sqlite:///mlflow.db", "--host 127.0.0.1", f"--port {port}"):
        assert flag in cmd, f"`make mlflow-ui` lacks `{flag}`: {cmd}"
    return cmd


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on ``port`` (Linux /proc/net/tcp{,6})."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            address, hex_port = cols[1].rsplit(":", 1)
            if int(hex_port, 16) == port and cols[3] == "0A":  # LISTEN
                raw = bytes.fromhex(address)
                if len(raw) == 4:
                    out.add(str(ipaddress.IPv4Address(raw[::-1])))
                else:  # four little-endian 32-bit words
                    out.add(str(ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))))
    return out


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


@contextmanager
def _mlflow_ui(project: Path, log: Path, startup_timeout: float = 180.0):
    """Start the Makefile's mlflow ui in ``project`` on a free 127.0.0.1 port (own process group);
    yields its base url; always stops the whole group."""
    port = _free_port()
    cmd = _makefile_mlflow_ui(project, port)
    server_env = {**env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(["/bin/sh", "-c", cmd], cwd=project, env=server_env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow ui exited ({proc.returncode}) before serving:\n{cmd}\n"
                            f"{log.read_text(errors='replace')[-6000:]}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow ui did not answer {base}/health within {startup_timeout:.0f} s:\n{cmd}\n"
                            f"{log.read_text(errors='replace')[-6000:]}")
            time.sleep(0.5)
        yield base, port
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 15
        while _group_pids(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = _group_pids(proc.pid)
        if left:  # a worker ignored SIGTERM
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        assert not _group_pids(proc.pid), f"mlflow ui left processes behind: {_group_pids(proc.pid)}"


def _api(base: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/{path}", data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.load(r)
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{path}: HTTP {exc.code}: {exc.read()[:2000]!r}") from exc


def _search_runs(base: str, experiment_id: str, filter_string: str = "") -> list[dict]:
    runs, token = [], None
    while True:
        body = {"experiment_ids": [experiment_id], "max_results": 500, "filter": filter_string,
                "order_by": ["attributes.start_time DESC"]}
        if token:
            body["page_token"] = token
        page = _api(base, "runs/search", body)
        runs += page.get("runs", [])
        token = page.get("next_page_token")
        if not token:
            return runs


def _tags(run_: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run_["data"].get("tags", [])}


def _metrics(run_: dict) -> dict[str, float]:
    return {m["key"]: m["value"] for m in run_["data"].get("metrics", [])}


@pytest.mark.slow
def test_mlflow_ui_shows_every_stage(smoke_repro: Path, tmp_path: Path) -> None:
    project = smoke_repro
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    missing = set(STAGES) - set(lock)
    assert not missing, f"dvc repro did not run stages {missing}"
    t0 = time.monotonic()
    with _mlflow_ui(project, tmp_path / "mlflow_ui.log") as (base, port):
        t_up = time.monotonic() - t0
        listening = _listening_addresses(port)
        if Path("/proc/net/tcp").exists():
            assert listening == {"127.0.0.1"}, f"mlflow ui listens on {listening}, not only 127.0.0.1"
        with urllib.request.urlopen(base + "/", timeout=30) as r:  # the UI itself is served
            assert r.status == 200 and b"<html" in r.read(4096).lower()

        experiment = _api(base, "experiments/get-by-name?experiment_name=llama2_pipeline")["experiment"]
        runs = _search_runs(base, experiment["experiment_id"])
        by_stage: dict[str, dict] = {}
        for r in runs:  # newest first: keep each stage's latest finished run
            stage = _tags(r).get("dvc_stage")
            if stage and r["info"]["status"] == "FINISHED":
                by_stage.setdefault(stage, r)
        absent = set(STAGES) - set(by_stage)
        assert not absent, f"no finished MLflow run for stages {sorted(absent)}; found {sorted(by_stage)}"
        for stage in STAGES:
            tags = _tags(by_stage[stage])
            pipelines = re.search(r"--pipelines[ =](\S+)", lock[stage]["cmd"]).group(1)
            assert tags.get("pipelines") == pipelines, f"{stage}: tag pipelines={tags.get('pipelines')!r}"
            assert re.fullmatch(r"[0-9a-f]{40}", tags.get("git_commit", "")), f"{stage}: git_commit {tags}"
            assert tags.get("profile") == "smoke", f"{stage}: profile tag {tags.get('profile')!r}"

        # the RLHF rounds: one dvc repro group, nested under its parent run, comparable metrics
        rounds = [by_stage[s] for s in STAGES if s.startswith("rlhf@")]
        groups = {_tags(r).get("repro_group") for r in rounds}
        parents = {_tags(r).get("mlflow.parentRunId") for r in rounds}
        assert len(groups) == 1 and None not in groups, f"rounds not in one repro group: {groups}"
        assert len(parents) == 1 and None not in parents, f"rounds not nested under one parent: {parents}"
        (group,), (parent_id,) = groups, parents
        parent = _api(base, f"runs/get?run_id={parent_id}")["run"]
        assert _tags(parent).get("repro_parent") == "true" and _tags(parent).get("repro_group") == group
        grouped = _search_runs(base, experiment["experiment_id"], f"tags.repro_group = '{group}'")
        grouped_ids = {r["info"]["run_id"] for r in grouped}
        assert {r["info"]["run_id"] for r in rounds} | {parent_id} <= grouped_ids
        children = _search_runs(base, experiment["experiment_id"], f"tags.`mlflow.parentRunId` = '{parent_id}'")
        assert {r["info"]["run_id"] for r in rounds} <= {r["info"]["run_id"] for r in children}
        first, *later = metrics = [_metrics(r) for r in rounds]
        for name, m in zip(ROUNDS, metrics):
            assert ROUND_METRICS <= set(m), f"{name} lacks metrics {sorted(ROUND_METRICS - set(m))}"
        policy = lambda m: {k for k in m if k.startswith("policy_")}  # noqa: E731
        for name, m in zip(ROUNDS[1:], later):
            assert policy(m) == policy(first), f"{name}'s policy metrics differ: {policy(m) ^ policy(first)}"

        # the lineage table of a round is an artifact the UI can list
        artifacts = _api(base, f"artifacts/list?run_id={rounds[0]['info']['run_id']}")
        assert "lineage.json" in {f["path"] for f in artifacts.get("files", [])}, artifacts
    print(f"mlflow ui up in {t_up:.1f} s; {len(runs)} runs; RLHF rounds grouped under {parent_id} ({group})")
