/**
 * How long from a stripped-upgrade failure to the first event over the
 * fallback? A client connects through a proxy that strips the upgrade
 * (nginx's plain proxy_pass); the server publishes an event every 2 ms; we
 * time from the WebSocket's close (the browser's only signal) to the first
 * event handed to the application. Node (ws + eventsource injected), then
 * Chromium if /usr/bin/chromium exists. Also prints the bundle size.
 *
 *   npx tsx bench/client-fallback.ts [runs]
 */
import { existsSync } from 'node:fs'
import { gzipSync } from 'node:zlib'
import { performance } from 'node:perf_hooks'
import { build } from 'esbuild'
import WebSocket from 'ws'
import { EventSource } from 'eventsource'
import { chromium } from 'playwright-core'
import { createClient } from '../lib/client'
import { startApp, startProxy } from '../test/client/helpers'

const runs = Number(process.argv[2] ?? 20)

function stats(xs: number[]): string {
  const s = [...xs].sort((a, b) => a - b)
  const q = (p: number) => s[Math.min(s.length - 1, Math.floor(p * s.length))]!.toFixed(1)
  return `median ${q(0.5)} ms, p90 ${q(0.9)} ms, min ${s[0]!.toFixed(1)} ms, max ${s.at(-1)!.toFixed(1)} ms (${s.length} runs)`
}

async function withStrippedApp<T>(fn: (base: string) => Promise<T>): Promise<T> {
  const app = await startApp()
  const proxy = await startProxy(app.srv.port, true)
  let n = 0
  const timer = setInterval(() => void app.rt.publish('project:1', 'tick', { n: n++ }), 2)
  try {
    return await fn(proxy.srv.base)
  } finally {
    clearInterval(timer)
    await proxy.srv.close()
    await app.rt.close()
    await app.srv.close()
  }
}

async function node(): Promise<number[]> {
  const out: number[] = []
  await withStrippedApp(async (base) => {
    for (let i = 0; i < runs; i++) {
      let failedAt = 0
      class Timed extends WebSocket {
        constructor(url: string, protocols?: string | string[]) {
          super(url, protocols)
          this.once('close', () => { if (failedAt === 0) failedAt = performance.now() })
        }
      }
      const c = createClient({ configUrl: `${base}/realtime/config`, WebSocket: Timed, EventSource, report: false })
      const first = await new Promise<number>((resolve) => c.subscribe('project:1', () => resolve(performance.now())))
      c.close()
      out.push(first - failedAt)
    }
  })
  return out
}

const PAGE = `<!doctype html><script type="module">
import { createClient } from '/client.js'
const Native = WebSocket
window.WebSocket = class extends Native { constructor(...a) { super(...a); this.addEventListener('close', () => { window.failedAt ??= performance.now() }) } }
const c = createClient({ configUrl: '/realtime/config', report: false })
c.subscribe('project:1', () => { window.firstAt ??= performance.now() })
</script>`

async function browser(bundle: string): Promise<number[] | string> {
  if (!existsSync('/usr/bin/chromium')) return 'skipped: /usr/bin/chromium is missing'
  const b = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--headless', '--no-sandbox', '--disable-gpu',
    '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'] })
  const out: number[] = []
  try {
    const app = await startApp({}, (req, res) => {
      const path = (req.url ?? '/').split('?')[0]
      if (path === '/') res.writeHead(200, { 'Content-Type': 'text/html' }).end(PAGE)
      else if (path === '/client.js') res.writeHead(200, { 'Content-Type': 'text/javascript' }).end(bundle)
      else if (path === '/favicon.ico') res.writeHead(204).end()
      else return false
      return true
    })
    const proxy = await startProxy(app.srv.port, true)
    let n = 0
    const timer = setInterval(() => void app.rt.publish('project:1', 'tick', { n: n++ }), 2)
    for (let i = 0; i < runs; i++) {
      const ctx = await b.newContext()
      const page = await ctx.newPage()
      await page.goto(`${proxy.srv.base}/`)
      await page.waitForFunction('window.firstAt !== undefined', undefined, { timeout: 10_000 })
      out.push(await page.evaluate('window.firstAt - window.failedAt') as number)
      await ctx.close()
    }
    clearInterval(timer)
    await proxy.srv.close()
    await app.rt.close()
    await app.srv.close()
  } finally {
    await b.close()
  }
  return out
}

async function main(): Promise<void> {
  const min = (await build({ entryPoints: ['lib/client/index.ts'], bundle: true, format: 'esm', minify: true, write: false, target: 'es2020' })).outputFiles[0]!.text
  console.log(`client bundle: ${Buffer.byteLength(min)} bytes minified, ${gzipSync(min, { level: 9 }).length} bytes gzipped`)
  console.log(`stripped upgrade → first event over SSE, Node:     ${stats(await node())}`)
  const c = await browser(min)
  console.log(`stripped upgrade → first event over SSE, Chromium: ${typeof c === 'string' ? c : stats(c)}`)
}

void main().then(() => process.exit(0))
