/**
 * The tabs case: server connections per editor with 5 tabs open, in real
 * Chromium (Debian's /usr/bin/chromium, never downloaded), with the client
 * sharing one connection (the default) and with `share: false`; and how
 * long the tabs go without a connection when the leading tab closes, while
 * events keep coming (and that none is lost or repeated).
 * Prints one line; prints why and exits 0 when Chromium is missing.
 */
import { existsSync } from 'node:fs'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { build } from 'esbuild'
import { chromium, type BrowserContext, type Page } from 'playwright-core'
import { createRealtime } from '../lib/server/realtime'

const CHROMIUM = '/usr/bin/chromium'
const TABS = 5

const PAGE = `<!doctype html><meta charset="utf-8"><script type="module">
import { createClient } from '/client.js'
const q = new URLSearchParams(location.search)
window.events = []
const c = createClient({ configUrl: '/realtime/config', share: q.get('share') !== 'false' })
c.subscribe('project:1', (e) => window.events.push(e.data.n))
window.client = c
</script>`

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

async function main(): Promise<void> {
  if (!existsSync(CHROMIUM)) {
    console.log(`tabs: skipped, ${CHROMIUM} is missing (apt-get install -y chromium)`)
    return
  }
  const bundle = (await build({ entryPoints: [`${__dirname}/../lib/client/index.ts`], bundle: true, format: 'esm', minify: true, write: false })).outputFiles[0]!.text
  const rt = createRealtime({})
  const server = createServer((req, res) => {
    if (rt.handleRequest(req, res)) return
    const path = (req.url ?? '/').split('?')[0]
    if (path === '/') res.writeHead(200, { 'Content-Type': 'text/html' }).end(PAGE)
    else if (path === '/client.js') res.writeHead(200, { 'Content-Type': 'text/javascript' }).end(bundle)
    else res.writeHead(404).end()
  })
  rt.attach(server)
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run'] })
  const until = async (what: () => boolean, ms = 10_000): Promise<void> => {
    const end = Date.now() + ms
    while (!what()) {
      if (Date.now() > end) throw new Error('tabs: timed out')
      await sleep(5)
    }
  }
  const editor = async (share: boolean): Promise<{ ctx: BrowserContext; pages: Page[]; connections: number }> => {
    const ctx = await browser.newContext()
    // Count the WebSockets each tab opens: the leader is the tab that opened one.
    await ctx.addInitScript(`window.__sockets = 0; const N = WebSocket; window.WebSocket = class extends N { constructor(...a) { super(...a); window.__sockets++ } }`)
    const pages: Page[] = []
    for (let i = 0; i < TABS; i++) {
      const page = await ctx.newPage()
      await page.goto(`${base}/?share=${share}`)
      pages.push(page)
    }
    for (const p of pages) await p.waitForFunction('window.client.state === "live"', undefined, { polling: 10 })
    await sleep(200) // any extra connection would be open by now
    return { ctx, pages, connections: rt.stats().connections }
  }
  try {
    const solo = await editor(false)
    const soloConnections = solo.connections
    await solo.ctx.close()
    await until(() => rt.stats().connections === 0)
    const { pages, connections } = await editor(true)
    // Hand over under a steady stream (an event every 2 ms); the gap is
    // from closing the leader to the new connection delivering.
    let n = 0
    let running = true
    const ticking = (async () => { while (running) { await rt.publish('project:1', 'tick', { n: n++ }); await sleep(2) } })()
    await sleep(100)
    const leader = (await Promise.all(pages.map((p) => p.evaluate(() => (window as unknown as { __sockets: number }).__sockets)))).indexOf(1)
    if (leader < 0) throw new Error('tabs: no tab holds the connection')
    const victim = pages[leader]!
    const rest = pages.filter((p) => p !== victim)
    const delivered = rt.stats().eventsDelivered
    const t0 = performance.now()
    await victim.close()
    await until(() => rt.stats().connections === 1 && rt.stats().eventsDelivered > delivered + 1)
    const takeover = performance.now() - t0
    await sleep(100)
    running = false
    await ticking
    let wrong = 0
    for (const p of rest) {
      await p.waitForFunction(`window.events.length >= ${n}`, undefined, { polling: 10 })
      const got = await p.evaluate(() => (window as unknown as { events: number[] }).events)
      if (got.length !== n || got.some((v, i) => v !== i)) wrong++
    }
    console.log(`tabs: one editor with ${TABS} tabs → ${connections} server connection(s) (${soloConnections} with share: false); ` +
      `leader tab closed → taken over in ${takeover.toFixed(0)} ms under an event every 2 ms, ${n} events, ${wrong === 0 ? 'none lost or repeated in any tab' : `${wrong} tab(s) with a gap or repeat`}`)
  } finally {
    await browser.close()
    await rt.close(200)
    server.close()
  }
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
