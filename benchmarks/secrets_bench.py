"""Secret redaction: jobs.secrets against detect-secrets 1.5 (Yelp), side by side.

    python benchmarks/secrets_bench.py [--files 10000] [--runs 2] [--quick]

1. The corpus (tests/data/secrets, see build_corpus.py): recall per kind and in total, and false
   positives: lines flagged outside every positive (the near-miss lines, and the other lines of the
   positive files). Ours counts a positive as found when its
   value is gone and `[REDACTED:kind]` is on its line; detect-secrets when it reports any line of
   the sample (it reports lines, not spans, and does not redact).
2. Real code: the .py files of this project's virtualenv site-packages, where there should be no
   secret at all: flagged lines per 10,000 lines for both, and each line we flag printed
   (truncated) for a person to check.
3. Packing: the generated 10,000-file tree of benchmarks/pack_bench.py, packed with redaction on
   (as always) against repomix on the same files; and detect-secrets' time to scan that tree (one
   file in ten, scaled up), which is why it is not called at run time.

`--quick` scans one real-code file in ten with detect-secrets (its full scan takes minutes).
If npm/repomix is not available the packing comparison says so and the rest still runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from detect_secrets.__version__ import VERSION  # noqa: E402
from detect_secrets.core.scan import scan_file  # noqa: E402
from detect_secrets.settings import default_settings  # noqa: E402
from pack_bench import REPOMIX_VERSION, generate, time_ours, time_repomix  # noqa: E402

from jobs.secrets import marker, redact_file  # noqa: E402

DATA = ROOT / "tests" / "data" / "secrets"


def peer_lines(paths: list[Path], types: Counter[str] | None = None) -> dict[Path, set[int]]:
    """Lines detect-secrets (all plugins, default filters) flags, per file; counts its types."""
    found: dict[Path, set[int]] = defaultdict(set)
    with default_settings():
        for path in paths:
            for secret in scan_file(str(path)):
                found[path].add(secret.line_number)
                if types is not None:
                    types[secret.type] += 1
    return found


def corpus() -> None:
    manifest = json.loads((DATA / "manifest.json").read_text())
    positives, near = manifest["positives"], manifest["near_misses"]
    files = sorted({p["file"] for p in positives} | {n["file"] for n in near})
    theirs = peer_lines([DATA / f for f in files])
    ours: dict[str, tuple[list[str], set[int]]] = {}
    for f in files:
        result = redact_file((DATA / f).read_text(), f)
        ours[f] = (result.text.split("\n"), {h.line for h in result.hits})
    spans = defaultdict(set)
    per_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # samples, ours, peer
    for p in positives:
        lines = range(p["start_line"], p["end_line"] + 1)
        spans[p["file"]].update(lines)
        out, _ = ours[p["file"]]
        row = per_kind[p["kind"]]
        row[0] += 1
        row[1] += marker(p["kind"]) in out[p["line"] - 1] and p["secret"] not in "\n".join(out)
        row[2] += any(n in theirs.get(DATA / p["file"], ()) for n in lines)
    fp_ours = sum(len(hit - spans[f]) for f, (_, hit) in ours.items())
    fp_peer = sum(len(theirs.get(DATA / f, set()) - spans[f]) for f in files)
    checked = sum(len((DATA / f).read_text().split("\n")) - len(spans[f]) for f in files)
    kinds_types = {Path(p["file"]).suffix or Path(p["file"]).name for p in positives}
    print(
        f"corpus: {len(positives)} positives of {len(per_kind)} kinds in {len(kinds_types)} file "
        f"types; {len(near)} near-miss lines ({checked} lines outside positives checked)"
    )
    print(f"{'kind':<30}{'samples':>8}{'ours':>6}{'peer':>6}")
    worse = []
    for kind, (n, o, t) in sorted(per_kind.items()):
        print(f"{kind:<30}{n:>8}{o:>6}{t:>6}")
        if o < t:
            worse.append(kind)
    n, o, t = (sum(r[i] for r in per_kind.values()) for i in range(3))
    print(f"{'TOTAL recall':<30}{n:>8}{o:>6}{t:>6}   ours {o / n:.1%}, detect-secrets {t / n:.1%}")
    print(f"{'false positives (lines)':<30}{'':>8}{fp_ours:>6}{fp_peer:>6}")
    print(f"kinds where ours < peer: {worse or 'none'}")


def real_code(quick: bool) -> None:
    site = next((ROOT / ".venv" / "lib").glob("python3*/site-packages"), None)
    if site is None:
        print("real code: no .venv site-packages (run `make install`)")
        return
    paths = sorted(site.rglob("*.py"))
    lines = 0
    flagged: list[tuple[str, int, str, str]] = []
    t0 = time.perf_counter()
    for path in paths:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        lines += text.count("\n")
        rel = str(path.relative_to(site))
        result = redact_file(text, rel)
        src = text.split("\n")
        flagged += [(rel, h.line, h.kind, src[h.line - 1].strip()[:100]) for h in result.hits]
    ours_s = time.perf_counter() - t0
    sample = paths[::10] if quick else paths
    sample_lines = sum(p.read_text(errors="replace").count("\n") for p in sample)
    t0 = time.perf_counter()
    peer_types: Counter[str] = Counter()
    theirs = sum(len(v) for v in peer_lines(sample, peer_types).values())
    peer_s = time.perf_counter() - t0
    print(f"\nreal code: {len(paths)} .py files, {lines} lines of {site.relative_to(ROOT)}")
    print(f"{'':<16}{'flagged':>9}{'per 10k lines':>15}{'seconds':>9}")
    print(f"{'ours':<16}{len(flagged):>9}{len(flagged) / lines * 1e4:>15.2f}{ours_s:>9.1f}")
    label = "detect-secrets" + (" (1/10)" if quick else "")
    print(f"{label:<16}{theirs:>9}{theirs / sample_lines * 1e4:>15.2f}{peer_s:>9.1f}")
    print(f"by kind (ours): {dict(Counter(k for _, _, k, _ in flagged))}")
    print(f"by type (detect-secrets): {dict(peer_types)}")
    print("lines we flag, for a person to check:")
    for rel, line, kind, src in flagged:
        print(f"  {rel}:{line}: {kind}: {src}")


def packing(n_files: int, runs: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="secrets-bench-"))
    try:
        tree = work / "generated"
        tree.mkdir()
        generate(tree, n_files)
        ours_s, pack = time_ours(tree, runs)
        shown = [f.path for f in pack.files if f.status != "omitted"]  # type: ignore[attr-defined]
        print(
            f"\npacking the generated tree: {len(shown)} files, redaction on ({os.cpu_count()} cpus)"
        )
        print(f"  ours (best of {runs}): {ours_s:.2f} s, redactions {dict(pack.redactions)}")  # type: ignore[attr-defined]
        try:
            theirs_s, n = time_repomix(tree, shown, runs, work / "repomix.xml")
            print(f"  repomix {REPOMIX_VERSION} (best of {runs}): {theirs_s:.2f} s for {n} files")
            print(f"  repomix / ours: {theirs_s / ours_s:.1f}x (target >= 5x)")
        except (OSError, subprocess.SubprocessError) as exc:
            print(f"  repomix unavailable ({type(exc).__name__}: {exc}); no comparison")
        texts = [(p, (tree / p).read_text()) for p in shown]
        t0 = time.perf_counter()
        for rel, text in texts:
            redact_file(text, rel)
        print(f"  of which redaction alone (ours, all files): {time.perf_counter() - t0:.2f} s")
        sample = [tree / p for p in shown[::10]]
        t0 = time.perf_counter()
        peer_lines(sample)
        peer_s = (time.perf_counter() - t0) * len(shown) / max(len(sample), 1)
        print(f"  detect-secrets scan of the same files (1 in 10, scaled): {peer_s:.1f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="detect-secrets on 1 real file in 10")
    args = parser.parse_args()
    print(f"jobs.secrets vs detect-secrets {VERSION}")
    corpus()
    real_code(args.quick)
    packing(args.files, args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
