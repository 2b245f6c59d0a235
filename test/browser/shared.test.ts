/**
 * One connection per browser (issue #11), in real Chromium: five tabs of
 * one editor share a single server connection; when the leading tab
 * closes, crashes or is frozen, another takes over and every tab still
 * holds every event once, in order, while events kept coming during the
 * handover. `share: false` keeps a connection per tab.
 */
import { type Browser, type BrowserContext, type Page } from 'playwright-core'
import { Cleanup } from '../helpers/net'
import { clientBundle, COUNT_SOCKETS, describeBrowser, launchChromium, pageServer } from '../helpers/chromium'
import { startApp, startProxy, sleep, waitFor, type App } from '../client/helpers'

// Every tab is on project:1; tab i also on its own tab:<i>, which only it wants.
const PAGE = `<!doctype html><meta charset="utf-8"><title>shared</title>
<script type="module">
import { createClient } from '/client.js'
const q = new URLSearchParams(location.search)
const log = (window.log = { states: [], events: [], own: [], errors: [], signedOut: [] })
const share = q.get('share') === null ? undefined : q.get('share') === 'true'
const token = q.get('token') === null ? undefined : () => q.get('token')
const c = createClient({ configUrl: '/realtime/config', share, token, backoff: { initialMs: 50, maxMs: 400 } })
c.on('state', (s) => log.states.push(s))
c.on('error', (e) => log.errors.push(e.code + ':' + e.topic))
c.on('signed-out', (e) => log.signedOut.push(e.reason))
c.subscribe('project:1', (e) => log.events.push(e.data.n))
c.subscribe('tab:' + q.get('i'), (e) => log.own.push(e.data.n))
window.client = c
</script>`

const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i)

describeBrowser('the shared-connection tests')('one connection per browser, in Chromium', () => {
  let browser: Browser
  let bundle: string
  const cleanup = new Cleanup()

  beforeAll(async () => {
    bundle = await clientBundle()
    browser = await launchChromium()
  }, 30_000)
  afterAll(async () => { await browser?.close() })
  afterEach(() => cleanup.run())

  const servePage = pageServer(PAGE, () => bundle)

  async function setup(options: Parameters<typeof startApp>[0] = {}): Promise<{ a: App; ctx: BrowserContext }> {
    const a = await startApp(options, servePage)
    cleanup.add(() => a.srv.close())
    cleanup.add(() => a.rt.close(200))
    const ctx = await browser.newContext()
    cleanup.add(() => ctx.close())
    await ctx.addInitScript(COUNT_SOCKETS)
    return { a, ctx }
  }

  async function tabs(a: App, ctx: BrowserContext, n: number, query = ''): Promise<Page[]> {
    const pages: Page[] = []
    for (let i = 0; i < n; i++) {
      const page = await ctx.newPage()
      await page.goto(`${a.srv.base}/?i=${i}${query}`)
      pages.push(page)
    }
    for (const page of pages) await page.waitForFunction('window.log.states.at(-1) === "live"', undefined, { timeout: 10_000, polling: 20 })
    return pages
  }

  const sockets = (page: Page) => page.evaluate(() => (window as unknown as { __sockets: number }).__sockets)
  const logOf = (page: Page) => page.evaluate(() => (window as unknown as { log: { events: number[]; own: number[] } }).log)

  async function leaderOf(pages: Page[]): Promise<Page> {
    // The leader is the page whose latest socket is the one open now: the one with the most constructed, among those alive.
    const counts = await Promise.all(pages.map(sockets))
    const open = await Promise.all(pages.map((p) => p.evaluate(() => (window as unknown as { client: { state: string } }).client.state)))
    expect(open.every((s) => s === 'live')).toBe(true)
    const i = counts.indexOf(Math.max(...counts))
    return pages[i]!
  }

  /** All subscribed: the one connection carries project:1 and every tab's own topic. */
  const subscribed = (a: App, topics: number) => waitFor(() => a.rt.stats().subscriptions === topics, `${topics} subscriptions`)

  /** Publish n, n+1, … every `everyMs` until stopped; resolves with the count. */
  function ticker(a: App, everyMs: number): { stop: () => Promise<number> } {
    let n = 0
    let running = true
    const done = (async () => {
      while (running) {
        await a.rt.publish('project:1', 'tick', { n: n++ })
        await sleep(everyMs)
      }
      return n
    })()
    return { stop: async () => { running = false; return done } }
  }

  async function allHave(pages: Page[], count: number): Promise<void> {
    for (const page of pages) {
      await page.waitForFunction(`window.log.events.length >= ${count}`, undefined, { timeout: 10_000, polling: 20 })
      expect((await logOf(page)).events).toEqual(range(count))
    }
  }

  test('5 tabs of one editor hold one server connection, and every tab gets its events (its own topics too)', async () => {
    const { a, ctx } = await setup()
    const pages = await tabs(a, ctx, 5)
    await subscribed(a, 6)
    expect(a.rt.stats().connections).toBe(1)
    expect((await Promise.all(pages.map(sockets))).reduce((x, y) => x + y)).toBe(1)
    for (let n = 0; n < 20; n++) await a.rt.publish('project:1', 'tick', { n })
    for (let i = 0; i < 5; i++) await a.rt.publish(`tab:${i}`, 'own', { n: i })
    await allHave(pages, 20)
    for (let i = 0; i < 5; i++) expect((await logOf(pages[i]!)).own).toEqual([i])
    console.log(`5 tabs → ${a.rt.stats().connections} server connection (share: false → 5)`)
  })

  test('share: false keeps one connection per tab', async () => {
    const { a, ctx } = await setup()
    await tabs(a, ctx, 3, '&share=false')
    await waitFor(() => a.rt.stats().connections === 3, '3 connections')
  })

  test('the leader closes, then the next one crashes, then the next is frozen: each time another takes over within a second, and no tab loses or repeats an event', async () => {
    const { a, ctx } = await setup()
    const pages = await tabs(a, ctx, 5)
    await subscribed(a, 6)
    const tick = ticker(a, 5)
    const takeovers: number[] = []
    const handOver = async (how: (leader: Page) => Promise<void>): Promise<Page> => {
      const leader = await leaderOf(pages)
      const before = a.rt.stats().eventsDelivered
      pages.splice(pages.indexOf(leader), 1)
      const t0 = Date.now()
      await how(leader)
      // Taken over: one connection again, with the remaining topics, delivering.
      await waitFor(() => a.rt.stats().connections === 1 && a.rt.stats().subscriptions === pages.length + 1
        && a.rt.stats().eventsDelivered > before + 1, 'a new leader', 5000)
      takeovers.push(Date.now() - t0)
      return leader
    }
    // Headless Chromium does not freeze a visible page (Page.setWebLifecycleState
    // leaves it running), so freeze it the way the browser does: the freeze
    // event, then no task runs for 3 s; then the resume event.
    const freeze = async (leader: Page): Promise<void> => {
      frozen = leader
      thawed = leader.evaluate(() => new Promise<void>((resolve) => {
        document.dispatchEvent(new Event('freeze'))
        // The freeze event's task ends (its microtasks run), then the page stops.
        setTimeout(() => {
          const until = Date.now() + 3000
          while (Date.now() < until) { /* frozen: nothing else runs in this page */ }
          document.dispatchEvent(new Event('resume'))
          resolve()
        })
      }))
    }
    let frozen: Page | undefined
    let thawed: Promise<void> | undefined
    await sleep(100)
    await handOver((leader) => leader.close())
    await sleep(100)
    // Page.crash never answers: the page is gone.
    await handOver(async (leader) => { void (await ctx.newCDPSession(leader)).send('Page.crash').catch(() => {}) })
    await sleep(100)
    await handOver(freeze)
    await sleep(100)
    const count = await tick.stop()
    await allHave(pages, count)
    // The frozen page missed nothing either: it catches up when it resumes.
    await thawed
    await allHave([frozen!], count)
    console.log(`takeover after close / crash / freeze: ${takeovers.join(' / ')} ms; ${count} events, none lost or repeated in any tab`)
    for (const ms of takeovers) expect(ms).toBeLessThan(1000)
  }, 60_000)

  test('what the server says to the one connection reaches every tab: a topic withdrawn from all, then the session ended', async () => {
    const denied = new Set<string>()
    const { a, ctx } = await setup({ authorize: (_user, topic) => !denied.has(topic) })
    const pages = await tabs(a, ctx, 3)
    await subscribed(a, 4)
    denied.add('project:1')
    await a.rt.reauthorize()
    for (const page of pages) await page.waitForFunction('window.log.errors.includes("forbidden:project:1")', undefined, { timeout: 5000, polling: 20 })
    // Dropped in every tab, on the server too; each tab's own topic stays.
    await subscribed(a, 3)
    await a.rt.publish('project:1', 'tick', { n: 0 })
    await a.rt.publish('tab:2', 'own', { n: 2 })
    await pages[2]!.waitForFunction('window.log.own.length === 1', undefined, { timeout: 5000, polling: 20 })
    for (const page of pages) expect((await logOf(page)).events).toEqual([])
    // The session ends: every tab is signed out, and none reconnects.
    expect(a.rt.disconnect(() => true)).toBe(1)
    for (const page of pages) await page.waitForFunction('window.client.state === "signed-out" && window.log.signedOut.length === 1', undefined, { timeout: 5000, polling: 20 })
    await sleep(300)
    expect(a.rt.stats().connections).toBe(0)
  })

  test('a page refused the Web Locks (as in a sandboxed frame) leads alone: its own connection, its events, nothing relayed', async () => {
    const { a, ctx } = await setup()
    const [shared] = await tabs(a, ctx, 1)
    const page = await ctx.newPage()
    await page.addInitScript(`navigator.locks.request = () => Promise.reject(new DOMException('refused', 'SecurityError'))`)
    await page.goto(`${a.srv.base}/?i=9`)
    await page.waitForFunction('window.log.states.at(-1) === "live"', undefined, { timeout: 10_000, polling: 20 })
    await waitFor(() => a.rt.stats().connections === 2, 'two connections')
    await a.rt.publish('project:1', 'tick', { n: 0 })
    await allHave([page, shared!], 1)
  })

  test('a server restart: the shared connection reconnects and every tab recovers what was published meanwhile, exactly', async () => {
    const { a, ctx } = await setup()
    const pages = await tabs(a, ctx, 3)
    await subscribed(a, 4)
    for (let n = 0; n < 2; n++) await a.rt.publish('project:1', 'tick', { n })
    await allHave(pages, 2)
    const port = a.srv.port
    await new Promise<void>((resolve) => {
      a.srv.server.close(() => resolve())
      for (const s of a.sockets) s.destroy()
    })
    for (const page of pages) await page.waitForFunction('window.client.state !== "live"', undefined, { timeout: 5000, polling: 20 })
    for (let n = 2; n < 7; n++) await a.rt.publish('project:1', 'tick', { n })
    a.srv.server.listen(port, '127.0.0.1')
    for (const page of pages) await page.waitForFunction('window.client.state === "live"', undefined, { timeout: 15_000, polling: 20 })
    await a.rt.publish('project:1', 'tick', { n: 7 })
    await allHave(pages, 8)
    expect(a.rt.stats().connections).toBe(1)
  }, 30_000)

  test('behind a proxy that strips the upgrade: the leader falls back to the event stream, and every tab is in fallback with every event', async () => {
    const { a, ctx } = await setup()
    const proxy = await startProxy(a.srv.port, true)
    cleanup.add(() => proxy.srv.close())
    const pages: Page[] = []
    for (let i = 0; i < 3; i++) {
      const page = await ctx.newPage()
      await page.goto(`${proxy.srv.base}/?i=${i}`)
      pages.push(page)
    }
    for (const page of pages) await page.waitForFunction('window.client.state === "fallback"', undefined, { timeout: 10_000, polling: 20 })
    await waitFor(() => a.rt.stats().fallbackStreams === 1, 'one event stream for the three tabs')
    for (let n = 0; n < 5; n++) await a.rt.publish('project:1', 'tick', { n })
    await allHave(pages, 5)
    expect(a.rt.stats().fallbackStreams).toBe(1)
  }, 30_000)

  test('with a token hook the tabs do not share by default (each may be another user); share: true says they are one', async () => {
    const users = new Map([['tok-anna', 'anna'], ['tok-ben', 'ben']])
    const { a, ctx } = await setup({
      authenticate: (req) => {
        const h = req.headers.authorization
        const id = h?.startsWith('Bearer ') ? users.get(h.slice(7)) : undefined
        return id === undefined ? null : { id }
      },
      authorize: (user, topic) => !topic.startsWith('tab:') || (user as { id: string }).id === 'anna',
    })
    // anna and ben in two tabs of one browser (tokens in sessionStorage): two connections, each its own user.
    await tabs(a, ctx, 1, '&token=tok-anna')
    const ben = await ctx.newPage()
    await ben.goto(`${a.srv.base}/?i=1&token=tok-ben`)
    await ben.waitForFunction('window.log.errors.includes("forbidden:tab:1")', undefined, { timeout: 10_000, polling: 20 })
    await waitFor(() => a.rt.stats().connections === 2, 'a connection per tab')
    // The app says its tabs are one user: shared.
    const { a: b, ctx: ctx2 } = await setup({ authenticate: (req) => (req.headers.authorization === 'Bearer tok-anna' ? { id: 'anna' } : null) })
    await tabs(b, ctx2, 3, '&token=tok-anna&share=true')
    await subscribed(b, 4)
    expect(b.rt.stats().connections).toBe(1)
  })
})
