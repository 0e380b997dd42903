// `deno run --allow-read --allow-write --allow-run --allow-net=127.0.0.1 tools/browser_check.ts
//   <report.html> [--screenshot page.png] [--chromium /usr/bin/chromium]`
//
// Opens a report page in a real headless Chromium and says what a reader would see: the console
// errors and uncaught exceptions of the page, every chart (figure.chart) with its number of
// drawn marks, every image and whether it loaded; optionally a full-page screenshot. Prints one
// JSON object; exits 1 when the page has an error, a chart without marks or a broken image.
//
// A minimal Chrome DevTools Protocol client over Deno's WebSocket (no npm dependency): Chromium
// is started with --remote-debugging-port=0 and a fresh profile folder, and prints the browser's
// WebSocket address on stderr. Only 127.0.0.1 is reached; the page itself is a local file.

import { resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

export const CHROMIUM = "/usr/bin/chromium";

export interface PageCheck {
  url: string;
  /** Console errors, uncaught exceptions and error log entries, in order. */
  errors: string[];
  charts: { id: string; title: string; marks: number }[];
  images: { alt: string; loaded: boolean }[];
  tables: number;
  /** Width and height of the whole page in CSS pixels. */
  size: [number, number];
}

/** What is wrong with a checked page (empty when nothing is). */
export function pageProblems(check: PageCheck): string[] {
  return [
    ...check.errors.map((e) => `console: ${e}`),
    ...check.charts.filter((c) => c.marks === 0).map((c) => `chart ${c.id} has no marks`),
    ...check.images.filter((i) => !i.loaded).map((i) => `image "${i.alt}" did not load`),
  ];
}

type Message = { id?: number; method?: string; params?: Record<string, unknown> } & {
  result?: Record<string, unknown>;
  error?: { message: string };
  sessionId?: string;
};

/** The fields of the page events read here (console, exceptions, log). */
interface EventParams {
  type?: string;
  args?: { value?: unknown; description?: string }[];
  exceptionDetails?: { text?: string; exception?: { description?: string } };
  entry?: { level: string; text: string; url?: string };
}

/** A CDP connection: numbered commands awaiting their reply, events to a listener. */
class Cdp {
  private next = 1;
  private pending = new Map<number, (m: Message) => void>();
  onEvent: (m: Message) => void = () => {};

  private constructor(private ws: WebSocket) {
    ws.onmessage = (e) => {
      const m = JSON.parse(e.data as string) as Message;
      if (m.id !== undefined) this.pending.get(m.id)?.(m), this.pending.delete(m.id);
      else this.onEvent(m);
    };
  }

  static connect(url: string): Promise<Cdp> {
    return new Promise((ok, fail) => {
      const ws = new WebSocket(url);
      ws.onopen = () => ok(new Cdp(ws));
      ws.onerror = () => fail(new Error(`peco: browser: cannot connect to ${url}`));
    });
  }

  send(
    method: string,
    params: Record<string, unknown> = {},
    sessionId?: string,
  ): Promise<Record<string, unknown>> {
    const id = this.next++;
    return new Promise((ok, fail) => {
      this.pending.set(
        id,
        (m) =>
          m.error ? fail(new Error(`peco: browser: ${method}: ${m.error.message}`)) : ok(m.result!),
      );
      this.ws.send(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }));
    });
  }

  close(): void {
    this.ws.close();
  }
}

/** Reads the child's stderr until Chromium prints its DevTools WebSocket address. */
async function devtoolsUrl(stderr: ReadableStream<Uint8Array>): Promise<string> {
  const decoder = new TextDecoder();
  let text = "";
  const reader = stderr.getReader();
  const deadline = setTimeout(() => reader.cancel(), 30_000);
  try {
    while (true) {
      const { value, done } = await reader.read();
      if (done) break;
      text += decoder.decode(value, { stream: true });
      const m = /DevTools listening on (ws:\/\/\S+)/.exec(text);
      if (m) {
        // Keep draining stderr so the browser never blocks on a full pipe.
        (async () => {
          while (!(await reader.read().catch(() => ({ done: true }))).done) { /* drain */ }
        })();
        return m[1];
      }
    }
  } finally {
    clearTimeout(deadline);
  }
  throw new Error(`peco: browser: Chromium printed no DevTools address:\n${text.slice(-2000)}`);
}

/** `promise`, or an error with `message` after `ms` milliseconds (the timer never outlives it). */
async function within<T>(ms: number, promise: Promise<T>, message: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, fail) => {
    timer = setTimeout(() => fail(new Error(`peco: browser: ${message}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** The page checks, run in the page. */
const PAGE_SCRIPT = `JSON.stringify({
  charts: [...document.querySelectorAll("figure.chart")].map((f) => ({
    id: f.id,
    title: f.dataset.title ?? "",
    marks: f.querySelectorAll("svg .role-mark > path, svg .role-mark > rect, svg .role-mark > line")
      .length,
  })),
  images: [...document.images].map((i) => ({ alt: i.alt, loaded: i.complete && i.naturalWidth > 0 })),
  tables: document.querySelectorAll("table").length,
  size: [document.documentElement.scrollWidth, document.documentElement.scrollHeight],
})`;

/**
 * Opens `htmlPath` in headless Chromium: the page's errors, charts and images, and a full-page
 * PNG screenshot written to `screenshot` when given.
 */
export async function checkPage(
  htmlPath: string,
  { screenshot, chromium = CHROMIUM, width = 1280 }: {
    screenshot?: string;
    chromium?: string;
    width?: number;
  } = {},
): Promise<PageCheck> {
  const url = pathToFileURL(resolve(htmlPath)).href;
  await Deno.stat(htmlPath).catch(() => {
    throw new Error(`peco: browser: ${htmlPath} is missing`);
  });
  const profile = await Deno.makeTempDir({ prefix: "peco-chromium-" });
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(chromium, {
      args: [
        "--headless",
        "--no-sandbox", // Chromium's sandbox refuses to run as root (CI); the page is our own file.
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--remote-debugging-port=0",
        `--user-data-dir=${profile}`,
        `--window-size=${width},900`,
        "about:blank",
      ],
      // Chromium's own scratch files (its singleton socket) then live in the profile, removed below.
      env: { TMPDIR: profile },
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
  } catch (error) {
    await Deno.remove(profile, { recursive: true });
    throw new Error(
      `peco: browser: cannot start ${chromium} (${(error as Error).message}); ` +
        "install it with: apt-get install -y chromium",
    );
  }
  let cdp: Cdp | null = null;
  try {
    cdp = await Cdp.connect(await devtoolsUrl(child.stderr));
    const { targetId } = await cdp.send("Target.createTarget", { url: "about:blank" });
    const { sessionId } = await cdp.send("Target.attachToTarget", { targetId, flatten: true }) as {
      sessionId: string;
    };
    const page = (method: string, params: Record<string, unknown> = {}) =>
      cdp!.send(method, params, sessionId);
    const errors: string[] = [];
    let loaded: () => void = () => {};
    const load = new Promise<void>((ok) => loaded = ok);
    cdp.onEvent = (m) => {
      if (m.sessionId !== sessionId) return;
      const p = (m.params ?? {}) as EventParams;
      if (m.method === "Page.loadEventFired") loaded();
      else if (m.method === "Runtime.exceptionThrown") {
        errors.push(p.exceptionDetails?.exception?.description ?? p.exceptionDetails?.text ?? "");
      } else if (m.method === "Runtime.consoleAPICalled" && /error|assert/.test(p.type ?? "")) {
        errors.push((p.args ?? []).map((a) => a.value ?? a.description).join(" "));
      } else if (m.method === "Log.entryAdded" && p.entry?.level === "error") {
        errors.push(`${p.entry.text}${p.entry.url ? ` (${p.entry.url})` : ""}`);
      }
    };
    await page("Page.enable");
    await page("Runtime.enable");
    await page("Log.enable");
    await page("Page.navigate", { url });
    await within(60_000, load, `${url} did not load in 60 s`);
    const { result } = await page("Runtime.evaluate", {
      expression: PAGE_SCRIPT,
      returnByValue: true,
    }) as { result: { value: string } };
    const found = JSON.parse(result.value) as Omit<PageCheck, "url" | "errors">;
    if (screenshot) {
      await page("Emulation.setDeviceMetricsOverride", {
        width,
        height: Math.min(found.size[1], 16_000),
        deviceScaleFactor: 1,
        mobile: false,
      });
      const { data } = await page("Page.captureScreenshot", { format: "png" }) as { data: string };
      await Deno.writeFile(screenshot, Uint8Array.from(atob(data), (c) => c.charCodeAt(0)));
    }
    return { url, errors, ...found };
  } finally {
    if (cdp) await within(5_000, cdp.send("Browser.close"), "").catch(() => {});
    cdp?.close();
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
    await child.status;
    await removeWhenQuiet(profile);
  }
}

/**
 * Removes a Chromium profile. Chromium's helper processes outlive the killed browser by a moment
 * and can still be writing into it, so a removal that meets a new entry is retried.
 */
async function removeWhenQuiet(profile: string): Promise<void> {
  for (let attempt = 0; attempt < 20; attempt++) {
    try {
      await Deno.remove(profile, { recursive: true });
      return;
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) return;
      await new Promise((ok) => setTimeout(ok, 100));
    }
  }
}

/**
 * Runs this tool in its own process (the only one that reaches 127.0.0.1, so callers need no net
 * permission) and returns its report, problems included.
 */
export async function runBrowserCheck(
  htmlPath: string,
  { screenshot, chromium = CHROMIUM }: { screenshot?: string; chromium?: string } = {},
): Promise<PageCheck & { problems: string[] }> {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--no-prompt",
      "--allow-read",
      "--allow-write",
      `--allow-run=${chromium}`,
      "--allow-net=127.0.0.1",
      fileURLToPath(import.meta.url),
      htmlPath,
      ...(screenshot ? ["--screenshot", screenshot] : []),
      ...["--chromium", chromium],
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(stdout).trim();
  if (!text.startsWith("{")) {
    throw new Error(
      `peco: browser check exited ${code}: ${new TextDecoder().decode(stderr).trim()}`,
    );
  }
  return JSON.parse(text);
}

if (import.meta.main) {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    options: { screenshot: { type: "string" }, chromium: { type: "string" } },
    allowPositionals: true,
  });
  if (positionals.length !== 1) {
    console.error("usage: tools/browser_check.ts <report.html> [--screenshot page.png]");
    Deno.exit(2);
  }
  try {
    const check = await checkPage(positionals[0], {
      screenshot: values.screenshot,
      chromium: values.chromium,
    });
    const problems = pageProblems(check);
    console.log(JSON.stringify({ ...check, problems }));
    if (problems.length) Deno.exit(1);
  } catch (error) {
    console.error((error as Error).message);
    Deno.exit(1);
  }
}
