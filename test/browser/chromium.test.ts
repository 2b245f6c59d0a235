/**
 * The client in real Chromium (Debian's /usr/bin/chromium, driven by
 * playwright-core), loading the esbuild bundle from the test's own server:
 * live updates over WebSocket; a server restart recovered without gap or
 * duplicate; a disabled channel → manual-refresh with no socket opened; and
 * the proxy story: behind a header-stripping proxy → fallback with every
 * event and a `stripped_upgrade` diagnosis, behind a forwarding one → live.
 */
import { type Browser, type Page } from 'playwright-core'
import type { RealtimeOptions } from '../../lib/types'
import { Cleanup } from '../helpers/net'
import { clientBundle, COUNT_SOCKETS, describeBrowser, launchChromium, pageServer } from '../helpers/chromium'
import { startApp, startProxy, sleep, waitFor, type App } from '../client/helpers'

const PAGE = `<!doctype html><meta charset="utf-8"><title>cms-realtime test page</title>
<script type="module">
import { createClient } from '/client.js'
const topic = new URLSearchParams(location.search).get('topic') ?? 'project:1'
const log = (window.log = { states: [], events: [], diagnosis: null })
const c = createClient({ configUrl: '/realtime/config', backoff: { initialMs: 100, maxMs: 800 } })
c.on('state', (s) => log.states.push(s))
c.on('diagnosis', (d) => { log.diagnosis = d })
c.subscribe(topic, (e) => log.events.push(e.data.n))
window.client = c
</script>`

interface Log { states: string[]; events: number[]; diagnosis: { cause: string } | null }

describeBrowser('the Chromium tests')('in Chromium', () => {
  let browser: Browser
  let bundle: string
  const cleanup = new Cleanup()
  const consoles = new WeakMap<Page, string[]>()

  beforeAll(async () => {
    bundle = await clientBundle()
    browser = await launchChromium()
  }, 30_000)
  afterAll(async () => { await browser?.close() })
  afterEach(() => cleanup.run())

  const servePage = pageServer(PAGE, () => bundle)

  async function app(options: RealtimeOptions = {}): Promise<App> {
    const a = await startApp(options, servePage)
    cleanup.add(() => a.srv.close())
    cleanup.add(() => a.rt.close())
    return a
  }

  async function open(base: string): Promise<Page> {
    const context = await browser.newContext()
    cleanup.add(() => context.close())
    const page = await context.newPage()
    const messages: string[] = []
    consoles.set(page, messages)
    page.on('console', (m) => messages.push(`${m.type()}: ${m.text()}`))
    page.on('pageerror', (e) => messages.push(`pageerror: ${e.message}`))
    await page.addInitScript(COUNT_SOCKETS)
    await page.goto(`${base}/`)
    return page
  }

  const log = (page: Page) => page.evaluate(() => (window as unknown as { log: Log }).log)
  const until = (page: Page, fn: string, timeout = 10_000) => page.waitForFunction(fn, undefined, { timeout, polling: 20 })

  async function publish(a: App, from: number, to: number): Promise<void> {
    for (let n = from; n <= to; n++) await a.rt.publish('project:1', 'tick', { n })
  }

  test('a live update arrives over the WebSocket', async () => {
    const a = await app()
    const page = await open(a.srv.base)
    await until(page, 'window.log.states.at(-1) === "live"')
    await waitFor(() => a.rt.stats().subscriptions === 1, 'subscriptions = 1')
    await publish(a, 0, 2)
    await until(page, 'window.log.events.length === 3')
    expect((await log(page)).events).toEqual([0, 1, 2])
    expect(await page.evaluate(() => (window as unknown as { __sockets: number }).__sockets)).toBe(1)
  })

  test('after a server restart it reconnects and recovers the events published meanwhile, without gap or duplicate', async () => {
    const a = await app()
    const page = await open(a.srv.base)
    await until(page, 'window.log.states.at(-1) === "live"')
    await waitFor(() => a.rt.stats().subscriptions === 1, 'subscriptions = 1')
    await publish(a, 0, 1)
    await until(page, 'window.log.events.length === 2')
    // Same Realtime (and history); the HTTP server closes, every socket with it, and reopens on the same port.
    const port = a.srv.port
    await new Promise<void>((resolve) => {
      a.srv.server.close(() => resolve())
      for (const s of a.sockets) s.destroy()
    })
    await until(page, 'window.log.states.at(-1) !== "live"')
    await publish(a, 2, 6)
    await sleep(300)
    a.srv.server.listen(port, '127.0.0.1')
    await until(page, 'window.log.states.at(-1) === "live"', 15_000)
    await publish(a, 7, 7)
    await until(page, 'window.log.events.length >= 8')
    await sleep(100)
    expect((await log(page)).events).toEqual([0, 1, 2, 3, 4, 5, 6, 7])
  })

  test('disabled with no fallback: manual-refresh, and no socket is opened', async () => {
    const a = await app({ webSocketEnabled: false, fallback: 'none' })
    const page = await open(a.srv.base)
    await until(page, 'window.log.states.at(-1) === "manual-refresh"')
    await sleep(300)
    expect(await page.evaluate(() => (window as unknown as { __sockets: number }).__sockets)).toBe(0)
    expect(a.upgrades).toBe(0)
    expect(a.hits.get('/realtime/events')).toBeUndefined()
    expect((await log(page)).diagnosis).toEqual({ cause: 'disabled' })
    expect(consoles.get(page)).toEqual([]) // quiet, like Optimizely's degraded mode
  })

  test('behind a proxy that strips the upgrade: fallback, every event, and the diagnosis names the proxy', async () => {
    const a = await app()
    const proxy = await startProxy(a.srv.port, true)
    cleanup.add(() => proxy.srv.close())
    const page = await open(proxy.srv.base)
    await until(page, 'window.log.states.at(-1) === "fallback"')
    await waitFor(() => a.rt.stats().fallbackStreams === 1, 'fallbackStreams = 1')
    await publish(a, 0, 9)
    await until(page, 'window.log.events.length === 10')
    await until(page, 'window.log.diagnosis !== null')
    const l = await log(page)
    expect(l.events).toEqual([...Array(10).keys()])
    expect(l.diagnosis).toEqual({ cause: 'stripped_upgrade' })
    expect(l.states).not.toContain('live')
    await waitFor(() => a.rt.stats().diagnoses.stripped_upgrade === 1, 'diagnoses.stripped_upgrade = 1')
  })

  test('behind a proxy that forwards upgrades: live', async () => {
    const a = await app()
    const proxy = await startProxy(a.srv.port, false)
    cleanup.add(() => proxy.srv.close())
    const page = await open(proxy.srv.base)
    await until(page, 'window.log.states.at(-1) === "live"')
    await waitFor(() => a.rt.stats().subscriptions === 1, 'subscriptions = 1')
    await publish(a, 0, 0)
    await until(page, 'window.log.events.length === 1')
    const l = await log(page)
    expect(l.states).toEqual(['live'])
    expect(a.rt.stats()).toMatchObject({ strippedUpgrades: 0, fallbackStreams: 0 })
  })
})
