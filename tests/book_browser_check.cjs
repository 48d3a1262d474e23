#!/usr/bin/env node
// Opens every page of a built book in headless Chromium, served from a local HTTP server on
// 127.0.0.1, and reports (JSON on stdout) what a reader's browser would have got wrong:
// console errors, uncaught exceptions, failed requests, requests to any other host (blocked, as
// an offline reader's browser would fail them), images that did not load, internal links to a
// missing page or anchor, and saved widgets that did not render; on a chapter (notebooks/*.html), code
// cells shown without a click (the book folds them); on the landing page, a missing or incomplete
// "results at a glance" table (every row links to its chapter); on the explorer's page, a static
// explorer whose slider does not change its image (screenshots before and after a key press on the
// slider). Records each page's height at 1280 px wide. Saves screenshots.
//
// Driven by tests/test_book_browser.py; usable alone, e.g. on the default profile's book:
//   node tests/book_browser_check.cjs --root _build/html --chromium /usr/bin/chromium \
//        --node-modules book_assets/node_modules --shots runs/test-artifacts [--report report.json]
//        [--explorer notebooks/03_decoded_evaluation.html]
// The report (JSON) goes to --report, or to stdout. Exit status: 0 when no page has a problem,
// 1 otherwise, 2 on a usage or set-up error.
"use strict";

const fs = require("fs");
const http = require("http");
const os = require("os");
const path = require("path");
const { createRequire } = require("module");

function parseArgs(argv) {
  const args = { root: null, chromium: "/usr/bin/chromium", nodeModules: null, shots: null, explorer: "",
                 report: null, timeoutMs: 30000, widgetTimeoutMs: 20000 };
  for (let i = 2; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, "").replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (!(key in args)) throw new Error(`unknown option ${argv[i]}`);
    args[key] = /Ms$/.test(key) ? Number(argv[i + 1]) : argv[i + 1];
  }
  if (!args.root || !args.nodeModules) throw new Error("--root and --node-modules are required");
  args.root = path.resolve(args.root);
  return args;
}

// ---------------------------------------------------------------- a static file server on 127.0.0.1

const TYPES = {
  ".html": "text/html; charset=utf-8", ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css",
  ".json": "application/json", ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
  ".svg": "image/svg+xml", ".ico": "image/x-icon", ".woff": "font/woff", ".woff2": "font/woff2", ".ttf": "font/ttf",
  ".eot": "application/vnd.ms-fontobject", ".otf": "font/otf", ".txt": "text/plain", ".inv": "application/octet-stream",
  ".map": "application/json", ".xml": "application/xml",
};

function serve(root) {
  const server = http.createServer((req, res) => {
    let rel;
    try {
      rel = decodeURIComponent(new URL(req.url, "http://127.0.0.1").pathname);
    } catch (e) {
      res.writeHead(400).end();
      return;
    }
    let file = path.join(root, rel);
    if (!file.startsWith(root)) { res.writeHead(403).end(); return; }
    if (fs.existsSync(file) && fs.statSync(file).isDirectory()) file = path.join(file, "index.html");
    if (!fs.existsSync(file)) { res.writeHead(404, { "Content-Type": "text/plain" }).end("not found"); return; }
    res.writeHead(200, { "Content-Type": TYPES[path.extname(file).toLowerCase()] || "application/octet-stream",
                         "Cache-Control": "no-store" });
    fs.createReadStream(file).pipe(res);
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

// ---------------------------------------------------------------- the pages

function bookPages(root) {
  const pages = [];
  (function walk(dir) {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      const rel = path.relative(root, full).split(path.sep).join("/");
      if (entry.isDirectory()) {
        if (!["_static", "_sources", "_images", "_downloads"].includes(rel)) walk(full);
      } else if (entry.name.endsWith(".html")) {
        pages.push(rel);
      }
    }
  })(root);
  return pages.sort();
}

// Runs in the page: waits until MathJax and the widget manager are done, then inspects the DOM.
async function settle(page, widgetTimeoutMs) {
  await page.waitForLoadState("networkidle").catch(() => {});
  await page.evaluate(() => (window.MathJax && MathJax.startup && MathJax.startup.promise) || null).catch(() => {});
  const hasWidgets = await page.locator('script[type="application/vnd.jupyter.widget-state+json"]').count();
  if (hasWidgets) {
    // html-manager inserts a div.widget-subarea before every view script whose model is in the state
    await page.waitForFunction(() => {
      const state = document.querySelector('script[type="application/vnd.jupyter.widget-state+json"]');
      const models = new Set(Object.keys(JSON.parse(state.textContent).state || {}));
      const views = [...document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')]
        .filter((s) => models.has(JSON.parse(s.textContent).model_id));
      return views.every((s) => s.previousElementSibling && s.previousElementSibling.classList.contains("widget-subarea")
                                 && s.previousElementSibling.childElementCount > 0);
    }, null, { timeout: widgetTimeoutMs }).catch(() => {});
  }
  // bring every image into view once (lazy images load only then), then back to the top
  await page.evaluate(async () => {
    for (const img of document.images) img.scrollIntoView();
    window.scrollTo(0, 0);
  });
  await page.waitForLoadState("networkidle").catch(() => {});
}

function inspect() {
  const state = document.querySelector('script[type="application/vnd.jupyter.widget-state+json"]');
  const models = state ? new Set(Object.keys(JSON.parse(state.textContent).state || {})) : new Set();
  const views = [...document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')];
  const withState = views.filter((s) => models.has(JSON.parse(s.textContent).model_id));
  const rendered = withState.filter((s) => s.previousElementSibling
    && s.previousElementSibling.classList.contains("widget-subarea") && s.previousElementSibling.childElementCount > 0);
  const controls = document.querySelectorAll(".widget-subarea .widget-slider, .widget-subarea .widget-dropdown, "
    + ".widget-subarea .widget-toggle-buttons, .widget-subarea .widget-button, .widget-subarea .widget-select, "
    + ".widget-subarea .widget-checkbox, .widget-subarea .widget-text, .widget-subarea .widget-radio").length;
  const shorten = (url) => (url.startsWith("data:") ? url.slice(0, 40) + "..." : url);
  const images = [...document.images].map((img) => ({
    src: shorten(img.currentSrc || img.src), ok: img.complete && img.naturalWidth > 0,
    captioned: !!(img.closest("figure") && img.closest("figure").querySelector("figcaption")),
    // a figure a notebook drew, not a frame that a widget shows (the explorer's rendered Hopper)
    output: !!img.closest(".cell_output") && !img.closest(".widget-subarea"),
  }));
  const ids = [...document.querySelectorAll("[id]")].map((e) => e.id)
    .concat([...document.querySelectorAll("a[name]")].map((e) => e.getAttribute("name")));
  const links = [...document.querySelectorAll("a[href]")].map((a) => a.href);
  const mathjax = document.querySelectorAll("mjx-container").length;
  // code a reader sees without a click: a cell's input outside a closed <details> (hide-input)
  const codeCells = [...document.querySelectorAll(".cell .cell_input")];
  const visibleCode = codeCells.filter((c) => !c.closest("details:not([open])")).length;
  const glance = document.querySelector("#results-at-a-glance table");
  const glanceRows = glance ? [...glance.querySelectorAll("tbody tr")] : [];
  const glanceLinks = glanceRows.flatMap((r) => [...r.querySelectorAll("a[href]")].map((a) => a.href));
  const unrenderedMath = document.querySelectorAll(".math:not(:has(mjx-container))").length;
  return { title: document.title, views: views.length, viewsWithState: withState.length, rendered: rendered.length,
           controls, images, ids, links, mathjax, unrenderedMath, hasWidgetState: !!state,
           codeCells: codeCells.length, visibleCode, glanceRows: glanceRows.length, glanceLinks,
           glanceRowsWithoutLink: glanceRows.filter((r) => !r.querySelector("a[href]")).length,
           height: document.documentElement.scrollHeight };
}

async function main() {
  const args = parseArgs(process.argv);
  const requireFrom = createRequire(path.join(path.resolve(args.nodeModules), "..", "package.json"));
  const { chromium } = requireFrom("playwright-core");
  const pages = bookPages(args.root);
  const server = await serve(args.root);
  const origin = `http://127.0.0.1:${server.address().port}`;
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "book-chromium-"));
  const started = Date.now();
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: args.chromium,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    viewport: { width: 1280, height: 900 },
    offline: false,
  });
  const report = { origin, chromium: context.browser() ? context.browser().version() : null, pages: [],
                   screenshots: {}, problems: [] };
  let current = null;
  // Every request to a host other than the local server fails, as it would for an offline reader.
  await context.route("**/*", (route) => {
    const url = new URL(route.request().url());
    if (url.origin === origin) return route.continue();
    if (current) current.problems.push(`request to a non-local host: ${route.request().url()}`);
    return route.abort("blockedbyclient");
  });
  const page = context.pages()[0] || (await context.newPage());
  page.on("console", (msg) => {
    if (current && msg.type() === "error") current.problems.push(`console error: ${msg.text()}`);
  });
  page.on("pageerror", (err) => { if (current) current.problems.push(`uncaught exception: ${err.message}`); });
  page.on("requestfailed", (req) => {
    const url = new URL(req.url());
    if (current && url.origin === origin) current.problems.push(`failed request: ${req.url()} (${req.failure().errorText})`);
  });
  page.on("response", (res) => {
    if (current && res.status() >= 400) current.problems.push(`HTTP ${res.status()}: ${res.url()}`);
  });

  const seen = {};  // page path -> {ids}
  const allLinks = [];
  for (const rel of pages) {
    current = { page: rel, problems: [] };
    const t0 = Date.now();
    try {
      await page.goto(`${origin}/${rel}`, { waitUntil: "load", timeout: args.timeoutMs });
      await settle(page, args.widgetTimeoutMs);
      const info = await page.evaluate(inspect);
      const finalPath = decodeURIComponent(new URL(page.url()).pathname).replace(/^\//, "");
      seen[finalPath] = new Set(info.ids);
      if (finalPath !== rel) seen[rel] = seen[finalPath];
      for (const img of info.images) if (!img.ok) current.problems.push(`image did not load: ${img.src}`);
      if (info.viewsWithState > info.rendered) {
        current.problems.push(`widgets did not render: ${info.rendered} of ${info.viewsWithState} saved widget views`);
      }
      if (info.unrenderedMath > 0) current.problems.push(`${info.unrenderedMath} math element(s) not typeset by MathJax`);
      for (const href of info.links) allLinks.push({ from: rel, href });
      if (rel.startsWith("notebooks/") && info.visibleCode > 0) {
        current.problems.push(`${info.visibleCode} of ${info.codeCells} code cells are shown without a click (the book folds them)`);
      }
      if (rel === "book/intro.html") {
        if (info.glanceRows === 0) current.problems.push("the landing page has no results-at-a-glance table");
        if (info.glanceRowsWithoutLink > 0) {
          current.problems.push(`${info.glanceRowsWithoutLink} row(s) of the results-at-a-glance table link to no section`);
        }
        for (const href of info.glanceLinks) {
          const url = new URL(href);
          const target = decodeURIComponent(url.pathname).replace(/^\//, "");
          if (url.origin !== origin || !fs.existsSync(path.join(args.root, target))) {
            current.problems.push(`results-at-a-glance link does not resolve in the book: ${href}`);
          }
        }
      }
      Object.assign(current, { title: info.title, widgetViews: info.viewsWithState, widgetsRendered: info.rendered,
                               widgetControls: info.controls, images: info.images.length,
                               uncaptionedFigures: info.images.filter((i) => i.output && !i.captioned).map((i) => i.src),
                               math: info.mathjax, codeCells: info.codeCells, visibleCodeCells: info.visibleCode,
                               glanceRows: info.glanceRows, glanceLinks: info.glanceLinks.length,
                               height: info.height, seconds: (Date.now() - t0) / 1000 });
      if (rel === "index.html" || rel === "book/intro.html") {
        // what a reader sees first: the top of the landing page, and the whole of it
        if (args.shots && rel === "book/intro.html") {
          fs.mkdirSync(args.shots, { recursive: true });
          const first = path.join(args.shots, "landing.png");
          const full = path.join(args.shots, "landing-full.png");
          await page.screenshot({ path: first });
          await page.screenshot({ path: full, fullPage: true });
          report.screenshots.landing = path.resolve(first);
          report.screenshots.landingFull = path.resolve(full);
        }
      }
      if (args.explorer && rel === args.explorer) {
        if (!info.hasWidgetState || info.viewsWithState === 0) current.problems.push("the explorer page has no saved widgets");
        if (info.controls === 0) current.problems.push("the explorer page shows no widget controls");
        if (args.shots) {
          fs.mkdirSync(args.shots, { recursive: true });
          const shot = path.join(args.shots, "explorer.png");
          const full = path.join(args.shots, "explorer-full.png");
          const firstControl = page.locator(".widget-subarea").first();
          if (await firstControl.count()) {
            await firstControl.scrollIntoViewIfNeeded();
            await page.evaluate(() => window.scrollBy(0, -120));
          }
          await page.screenshot({ path: shot });
          await page.screenshot({ path: full, fullPage: true });
          report.screenshots.explorer = path.resolve(shot);
          report.screenshots.explorerFull = path.resolve(full);
        }
        // the static explorer: its slider, linked to precomputed images in the browser (jslink), must
        // change the image with no kernel: a pixel difference between two screenshots
        const statik = page.locator(".widget-subarea", { hasText: "Static explorer" }).first();
        if (await statik.count()) {
          const handle = statik.locator(".noUi-handle").first();
          await statik.scrollIntoViewIfNeeded();
          const before = await statik.screenshot();
          await handle.focus();
          await page.keyboard.press("ArrowRight");
          await page.waitForTimeout(500);
          const after = await statik.screenshot();
          const changed = !before.equals(after);
          // and its menu switches to another network, layer or code
          const menu = statik.locator("select").first();
          let menuChanged = null;
          if (await menu.count() && (await menu.locator("option").count()) > 1) {
            await menu.selectOption({ index: 1 });
            await page.waitForTimeout(500);
            menuChanged = !after.equals(await statik.screenshot());
            if (!menuChanged) current.problems.push("the static explorer's menu did not change what it shows");
          }
          current.staticExplorer = { changed, menuChanged };
          if (!changed) current.problems.push("moving the static explorer's slider did not change what it shows");
          if (args.shots) {
            const b = path.join(args.shots, "explorer-static-before.png");
            const a = path.join(args.shots, "explorer-static-after.png");
            fs.writeFileSync(b, before);
            fs.writeFileSync(a, after);
            report.screenshots.staticBefore = path.resolve(b);
            report.screenshots.staticAfter = path.resolve(a);
          }
        } else {
          current.staticExplorer = null;
        }
      }
    } catch (err) {
      current.problems.push(`could not load: ${err.message.split("\n")[0]}`);
    }
    report.pages.push(current);
  }
  current = null;

  // internal links: the target file exists and, for a fragment, the target page has that id
  const broken = new Map();
  for (const { from, href } of allLinks) {
    const url = new URL(href);
    if (url.origin !== origin) continue;  // external links are not followed (nor fetched)
    const target = decodeURIComponent(url.pathname).replace(/^\//, "") || "index.html";
    const file = path.join(args.root, target);
    let problem = null;
    if (!fs.existsSync(file)) problem = `broken link to ${target}`;
    else if (url.hash && target.endsWith(".html")) {
      const ids = seen[target];
      const id = decodeURIComponent(url.hash.slice(1));
      if (ids && !ids.has(id)) problem = `broken anchor ${target}${url.hash}`;
    }
    if (problem) {
      const key = `${from}: ${problem}`;
      broken.set(key, (broken.get(key) || 0) + 1);
    }
  }
  for (const [key] of broken) {
    const [from, problem] = [key.slice(0, key.indexOf(": ")), key.slice(key.indexOf(": ") + 2)];
    report.pages.find((p) => p.page === from).problems.push(problem);
  }
  await context.close();
  server.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
  report.seconds = (Date.now() - started) / 1000;
  report.problems = report.pages.flatMap((p) => p.problems.map((x) => `${p.page}: ${x}`));
  const text = JSON.stringify(report, null, 1) + "\n";
  if (args.report) fs.writeFileSync(args.report, text);
  else process.stdout.write(text);
  // exitCode, not exit(): exit() may cut off what is still buffered for a pipe
  process.exitCode = report.problems.length ? 1 : 0;
}

main().catch((err) => {
  process.stderr.write(`${err.stack || err}\n`);
  process.exitCode = 2;
});
