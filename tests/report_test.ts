// The report's charts rendered to SVG from a small metrics fixture, each checked on the SVG's
// structure (title, axis titles, legend entries, number of marks), and the HTML page written from
// report blocks (self-contained: inline SVG, data URIs, no script).

import assert from "node:assert/strict";
import { join } from "node:path";
import "./util.ts";
import { encodePng } from "../lib/io/png.ts";
import {
  barChart,
  type Chart,
  codeFrequencyChart,
  curveGroups,
  finetuneCharts,
  metricKind,
  probeChart,
  renderSvg,
  stageCurveCharts,
} from "../lib/report/charts.ts";
import { fileReader, toHtml } from "../lib/report/document.ts";
import { imageGrid } from "../lib/report/images.ts";
import { runBrowserCheck } from "../tools/browser_check.ts";

/** What an SVG of vega shows: texts of each role and the items of each kind of mark. */
interface SvgSummary {
  title: string[];
  axisTitles: string[];
  legendLabels: string[];
  /** Lines, bars and points of the data (not of legends or axes). */
  lines: number;
  bars: number;
  points: number;
}

function summarise(svg: string): SvgSummary {
  const groups = [
    ...svg.matchAll(/<g class="mark-(?!group)(\w+) role-([\w-]+)[^"]*"[^>]*>(.*?)<\/g>/gs),
  ];
  const texts = (role: string) =>
    groups.filter((g) => g[2] === role).flatMap((g) =>
      [...g[3].matchAll(/<text[^>]*>([^<]*)<\/text>/g)].map((t) => t[1])
    );
  const items = (mark: string, tag: string) =>
    groups.filter((g) => g[1] === mark && g[2] === "mark")
      .reduce((n, g) => n + g[3].split(`<${tag}`).length - 1, 0);
  return {
    title: texts("title-text"),
    axisTitles: texts("axis-title"),
    legendLabels: texts("legend-label"),
    lines: items("line", "path"),
    bars: items("rect", "path"),
    points: items("symbol", "path"),
  };
}

const render = async (chart: Chart) => summarise(await renderSvg(chart));

/** Two logs of a pretrain-like stage: losses, accuracies, an id and bookkeeping. */
const RECORDS = [
  {
    step: 10,
    loss: 5,
    accuracy: 0.1,
    eval_loss: 6,
    eval_accuracy: 0.05,
    top_code: 7,
    top_code_share: 0.2,
    lr: 1e-3,
    images_per_s: 50,
  },
  {
    step: 20,
    loss: 0.3,
    accuracy: 0.5,
    eval_loss: 0.5,
    eval_accuracy: 0.4,
    top_code: 3,
    top_code_share: 0.3,
    lr: 2e-3,
    images_per_s: 60,
  },
  { step: 30, loss: 0.2, accuracy: 0.6, psnr: 21, perplexity: 40, eval_images: 5 },
];

Deno.test("metrics are charted by kind: ids, counts and bookkeeping never share a loss axis", () => {
  assert.equal(metricKind("top_code"), null);
  assert.equal(metricKind("distinct_codes"), null);
  assert.equal(metricKind("logits_real"), "adversarial");
  assert.equal(metricKind("d_weight"), "adversarial");
  assert.equal(metricKind("g_adv"), "loss");
  assert.equal(metricKind("eval_images"), null);
  assert.equal(metricKind("eval_masked_patches"), null);
  assert.equal(metricKind("lr"), null);
  assert.equal(metricKind("top_code_share"), "fraction");
  assert.equal(metricKind("pixel"), "loss");
  assert.deepEqual(curveGroups(RECORDS), [
    { kind: "loss", keys: ["loss", "eval_loss"], logY: true },
    { kind: "fraction", keys: ["accuracy", "eval_accuracy", "top_code_share"], logY: false },
    { kind: "psnr", keys: ["psnr"], logY: false },
    { kind: "perplexity", keys: ["perplexity"], logY: false },
  ]);
});

Deno.test("training curves: a chart per kind, held-out dashed beside train, log losses", async () => {
  const charts = stageCurveCharts(RECORDS, "c1_pretrain", "pretrain");
  assert.deepEqual(charts.map((c) => c.id), [
    "c1_pretrain_loss",
    "c1_pretrain_fraction",
    "c1_pretrain_psnr",
    "c1_pretrain_perplexity",
  ]);
  const loss = await render(charts[0]);
  assert.deepEqual(loss.title, ["pretrain: losses"]);
  assert.deepEqual(loss.axisTitles, ["step", "loss (log)"]);
  // Legends: the metric (train and held-out share a colour), then the split (dashes).
  assert.deepEqual(loss.legendLabels, ["loss", "train", "held-out"]);
  assert.equal(loss.lines, 2, "loss and eval_loss");
  assert.equal(loss.points, 3 + 2);
  const frac = await render(charts[1]);
  assert.deepEqual(frac.axisTitles, ["step", "fraction"]);
  assert.deepEqual(frac.legendLabels, ["accuracy", "top_code_share", "train", "held-out"]);
  assert.equal(frac.lines, 3);
  assert.equal(frac.points, 3 + 2 + 2);
  const psnr = await render(charts[2]);
  assert.deepEqual(psnr.axisTitles, ["step", "PSNR (dB)"]);
  assert.deepEqual(psnr.legendLabels, ["psnr"]);
  assert.equal(psnr.points, 1);
  assert.deepEqual(stageCurveCharts([{ step: 1, lr: 1, top_code: 3 }], "x", "x"), []);
});

Deno.test("fine-tuning, probe and code-frequency charts", async () => {
  const [loss, acc] = finetuneCharts([
    { label: "λ=1", curve: [{ step: 1, loss: 2 }, { step: 2, loss: 1, val_acc: 0.5 }] },
    { label: "scratch", curve: [{ step: 1, loss: 2.2 }, { step: 2, loss: 1.5, val_acc: 0.3 }] },
  ]).map((c) => render(c));
  const l = await loss, a = await acc;
  assert.deepEqual(l.title, ["Fine-tuning: training loss"]);
  assert.deepEqual(l.legendLabels, ["λ=1", "scratch"]);
  assert.deepEqual([l.lines, l.points], [2, 4]);
  assert.deepEqual(a.axisTitles, ["step", "top-1 accuracy"]);
  assert.deepEqual([a.lines, a.points], [2, 2]);

  const probe = await render(probeChart([
    { label: "λ=0", perBlock: [{ block: 1, val: 0.2 }, { block: 2, val: 0.3 }] },
    { label: "λ=1", perBlock: [{ block: 1, val: 0.25 }, { block: 2, val: 0.4 }] },
  ]));
  assert.deepEqual(probe.axisTitles, ["block", "held-out top-1 accuracy"]);
  assert.deepEqual([probe.lines, probe.points, probe.legendLabels.length], [2, 4, 2]);

  // Shares spanning more than two decades: a log axis; unused codes are not ranked.
  const codes = await render(codeFrequencyChart("codes", "Code frequency", {
    train: [500, 0, 3, 20, 1],
    val: [50, 5, 0, 0, 0],
  }));
  assert.deepEqual(codes.axisTitles, ["code rank", "share of tokens (log)"]);
  assert.deepEqual(codes.legendLabels, ["train", "val"]);
  assert.deepEqual([codes.lines, codes.points], [2, 4 + 2]);
  // Hundreds of codes: the line alone, no symbol per code.
  const many = await render(codeFrequencyChart("codes", "Code frequency", {
    train: Array.from({ length: 300 }, (_, i) => i + 1),
  }));
  assert.deepEqual([many.lines, many.points], [1, 0]);
});

Deno.test("arm comparison bars: a bar per arm, per-seed points where there are several", async () => {
  const one = await render(barChart("b1", "Top-1", [
    { group: "scratch", values: [0.3] },
    { group: "λ=1", values: [0.5] },
  ], { yTitle: "top-1 accuracy" }));
  assert.deepEqual(one.title, ["Top-1"]);
  assert.deepEqual(one.axisTitles, ["top-1 accuracy"]);
  assert.deepEqual([one.bars, one.points], [2, 0]);
  const seeds = await render(barChart("b2", "Top-1", [
    { group: "λ=0", values: [0.3, 0.35, 0.31] },
    { group: "λ=1", values: [0.5, 0.52] },
    { group: "missing", values: [] },
  ], { yTitle: "top-1 accuracy" }));
  assert.deepEqual([seeds.bars, seeds.points], [2, 5]);
});

Deno.test("report.html is one page: the tables, charts inline, images as data URIs", async () => {
  const dir = await Deno.makeTempDir({ prefix: "peco-report-" });
  const cell = { pixels: new Uint8Array(16).fill(90), channels: 1, height: 4, width: 4 };
  const grid = imageGrid([[cell, cell]], { scale: 2 });
  await Deno.writeFile(join(dir, "g.png"), encodePng(grid.image));
  const chart = stageCurveCharts(RECORDS, "c", "pretrain")[0];
  const html = await toHtml("T <1>", [
    { kind: "heading", level: 1, text: "Report" },
    { kind: "text", text: "Data `runs/x` & more." },
    { kind: "table", header: ["a", "b"], rows: [["x|y", 1], [null, { image: "g.png", alt: "p" }]] },
    { kind: "chart", id: chart.id, title: chart.title, file: "c.svg", svg: await renderSvg(chart) },
    {
      kind: "grid",
      file: "g.png",
      alt: "g",
      columns: ["one", "two"],
      layout: grid.layout,
      caption: "C",
    },
  ], fileReader(dir));
  assert.match(html, /^<!DOCTYPE html>/);
  assert.ok(html.includes("<title>T &lt;1&gt;</title>"));
  assert.ok(html.includes("<p>Data <code>runs/x</code> &amp; more.</p>"));
  assert.ok(html.includes('<td class="l">x|y</td><td class="r">1</td>'));
  assert.equal([...html.matchAll(/src="data:image\/png;base64,/g)].length, 2);
  assert.ok(
    html.includes('<figure class="chart" id="chart-c_loss" data-title="pretrain: losses">'),
  );
  assert.ok(html.includes("grid-template-columns: repeat(2, 8px); column-gap: 4px"));
  assert.ok(html.includes("<span>one</span><span>two</span>"));
  assert.doesNotMatch(html, /<script|(src|href)="https?:/);
  await assert.rejects(
    toHtml(
      "x",
      [{ kind: "table", header: ["a"], rows: [[{ image: "no.png", alt: "" }]] }],
      fileReader(dir),
    ),
    /no\.png/,
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("the browser check reports console errors, charts without marks and broken images", async () => {
  const dir = await Deno.makeTempDir({ prefix: "peco-browser-" });
  const chart = stageCurveCharts(RECORDS, "c", "pretrain")[0];
  const good = await toHtml("ok", [
    { kind: "chart", id: chart.id, title: chart.title, file: "c.svg", svg: await renderSvg(chart) },
  ], fileReader(dir));
  await Deno.writeTextFile(join(dir, "good.html"), good);
  const ok = await runBrowserCheck(join(dir, "good.html"), { screenshot: join(dir, "good.png") });
  assert.deepEqual(ok.problems, []);
  assert.deepEqual(ok.charts, [{ id: "chart-c_loss", title: "pretrain: losses", marks: 2 + 5 }]);
  assert.ok((await Deno.stat(join(dir, "good.png"))).size > 1000, "a screenshot");
  await Deno.writeTextFile(
    join(dir, "bad.html"),
    `<!DOCTYPE html><html><body><figure class="chart" id="chart-empty"><svg></svg></figure>` +
      `<img alt="gone" src="missing.png"><script>console.error("boom"); undefinedCall();</script>` +
      `</body></html>`,
  );
  const bad = await runBrowserCheck(join(dir, "bad.html"));
  assert.ok(bad.problems.includes("chart chart-empty has no marks"), bad.problems.join("; "));
  assert.ok(bad.problems.includes('image "gone" did not load'), bad.problems.join("; "));
  assert.ok(bad.problems.some((p) => p.includes("boom")), bad.problems.join("; "));
  assert.ok(bad.problems.some((p) => p.includes("undefinedCall")), bad.problems.join("; "));
  assert.ok(bad.problems.some((p) => p.includes("missing.png")), bad.problems.join("; "));
  await Deno.remove(dir, { recursive: true });
});
