"""Renders every page of the built site in headless Chromium: a screenshot each, and a check that
its math was typeset, its code highlighted and its images loaded.

    make docs && python docs/render_check.py --out site-screenshots

The site loads MathJax 3 from a CDN. On a machine without internet (or to check offline) pass
`--mathjax /usr/share/javascript/mathjax/MathJax.js` (Debian's libjs-mathjax, MathJax 2.7): the
pages are copied with that script in place of the CDN's, which typesets the same TeX. Needs a
Chromium (`apt install chromium`); exits 1 naming each page that fails a check.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

CDN_MATHJAX = re.compile(r'<script src="https://cdn\.jsdelivr\.net/npm/mathjax@3/[^"]*"></script>')

# Runs in the page after it settled: what a reader would see, counted.
PROBE = """
<script>
window.addEventListener("load", () => setTimeout(() => {
  const images = [...document.querySelectorAll("article img")];
  const report = {
    math_sources: document.querySelectorAll(".arithmatex").length,
    math_typeset: document.querySelectorAll("mjx-container, .MathJax_CHTML, .MathJax_SVG, .MathJax").length,
    math_errors: document.querySelectorAll("mjx-merror, .MathJax_Error, merror").length,
    code_blocks: document.querySelectorAll("article pre > code").length,
    highlighted_tokens: document.querySelectorAll("article .highlight code span[class]").length,
    images: images.length,
    broken_images: images.filter(i => !i.complete || i.naturalWidth === 0).length,
  };
  const out = document.createElement("pre");
  out.id = "render-report";
  out.textContent = JSON.stringify(report);
  document.body.appendChild(out);
}, 3000));
</script>
"""


def chromium(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if binary is None:
        sys.exit("no Chromium found: install it (Debian: apt install chromium) and run again")
    return subprocess.run([binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--allow-file-access-from-files", "--virtual-time-budget=8000", *args],
                          capture_output=True, text=True, timeout=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", default="site", help="the built site (make docs)")
    parser.add_argument("--out", default="site-screenshots", help="folder for the screenshots")
    parser.add_argument("--mathjax", help="a local MathJax.js to use instead of the CDN's")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2400)
    args = parser.parse_args()

    site = pathlib.Path(args.site)
    if not (site / "index.html").exists():
        sys.exit(f"--site {site}: no built site there; run `make docs` first")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        copy = pathlib.Path(tmp) / "site"
        shutil.copytree(site, copy)
        for page in sorted(copy.rglob("index.html")):
            html = page.read_text(encoding="utf-8")
            if args.mathjax:
                local = pathlib.Path(args.mathjax).resolve()
                html = CDN_MATHJAX.sub(f'<script src="file://{local}?config=TeX-AMS_CHTML"></script>', html)
            page.write_text(html.replace("</body>", PROBE + "</body>"), encoding="utf-8")

            name = str(page.parent.relative_to(copy)).replace("/", "_")
            name = "index" if name == "." else name
            chromium(f"--window-size={args.width},{args.height}", f"--screenshot={out.resolve() / (name + '.png')}",
                     page.as_uri())
            dom = chromium("--dump-dom", page.as_uri()).stdout
            found = re.search(r'<pre id="render-report">(.*?)</pre>', dom, re.S)
            if not found:
                failures.append(f"{name}: the page did not finish loading")
                continue
            report = json.loads(found.group(1).replace("&quot;", '"'))
            problems = []
            if report["math_sources"] and not report["math_typeset"]:
                problems.append(f"{report['math_sources']} formulas not typeset")
            if report["math_errors"]:
                problems.append(f"{report['math_errors']} formulas with TeX errors")
            if report["code_blocks"] and not report["highlighted_tokens"]:
                problems.append("code is not highlighted")
            if report["broken_images"]:
                problems.append(f"{report['broken_images']} of {report['images']} images did not load")
            print(f"{name:28s} {json.dumps(report)}" + (f"  FAIL: {'; '.join(problems)}" if problems else ""))
            failures += [f"{name}: {p}" for p in problems]
    print(f"screenshots in {out}/")
    if failures:
        print("\n".join(failures), file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
