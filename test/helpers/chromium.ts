/**
 * Real Chromium for the browser tests: Debian's /usr/bin/chromium driven by
 * playwright-core (never a downloaded browser). Outside CI a missing binary
 * skips the suite with a printed reason; under CI=true it runs and fails.
 */
import { existsSync } from 'node:fs'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { build } from 'esbuild'
import { chromium, type Browser } from 'playwright-core'

export const CHROMIUM = '/usr/bin/chromium'
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--no-first-run', '--disable-quic']

/** `describe`, or `describe.skip` (saying why) when Chromium is missing outside CI. */
export function describeBrowser(what: string): jest.Describe {
  if (existsSync(CHROMIUM) || process.env.CI === 'true') return describe
  console.log(`skipping ${what}: ${CHROMIUM} is missing (apt-get install -y chromium); under CI=true they run and fail`)
  return describe.skip
}

export function launchChromium(): Promise<Browser> {
  return chromium.launch({ executablePath: CHROMIUM, args: ARGS })
}

/** Counts WebSocket constructions in `window.__sockets`, before any page script runs. */
export const COUNT_SOCKETS = `window.__sockets = 0
const Native = window.WebSocket
window.WebSocket = class extends Native { constructor(...a) { super(...a); window.__sockets++ } }`

/** The browser client as one minified ES module, from the sources. */
export async function clientBundle(): Promise<string> {
  const out = await build({ entryPoints: ['lib/client/index.ts'], bundle: true, format: 'esm', minify: true, write: false })
  return out.outputFiles[0]!.text
}

/** A request handler serving `html` at `/` and `bundle` at `/client.js`; false for anything else. */
export function pageServer(html: string, bundle: () => string): (req: IncomingMessage, res: ServerResponse) => boolean {
  return (req, res) => {
    const path = (req.url ?? '/').split('?')[0]
    if (path === '/') res.writeHead(200, { 'Content-Type': 'text/html' }).end(html)
    else if (path === '/favicon.ico') res.writeHead(204).end()
    else if (path === '/client.js') res.writeHead(200, { 'Content-Type': 'text/javascript' }).end(bundle())
    else return false
    return true
  }
}
