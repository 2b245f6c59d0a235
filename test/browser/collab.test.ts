/**
 * Presence, soft locks and the stale-edit warning in the demo's item editor,
 * in real Chromium (issue #10): two editors in two browser contexts and a
 * second tab of one of them. Short timings, so the graces are measurable.
 */
import { execFileSync } from 'node:child_process'
import type { IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import { type Browser, type BrowserContext, type Page } from 'playwright-core'
import { createApp } from '../../examples/koa-cms/app'
import { Cleanup, listen } from '../helpers/net'
import { describeBrowser, launchChromium } from '../helpers/chromium'
import { startUpgradeProxy } from '../../examples/behind-proxy/proxy'


const GRACE = { leaveGraceMs: 1500, lockGraceMs: 2000, leaseMs: 30_000 }

describeBrowser('the collaboration tests in Chromium')('collaboration in the demo, in Chromium', () => {
  let browser: Browser
  const cleanup = new Cleanup()
  /** Upgraded sockets by user (from the demo cookie), to cut one without a close. */
  const sockets = new Map<string, Set<Duplex>>()
  let base = ''
  let itemId = 0
  let app: { rt: ReturnType<typeof createApp>['rt'] }

  beforeAll(async () => {
    execFileSync(process.execPath, ['scripts/build-client.mjs'], { stdio: 'ignore' })
    browser = await launchChromium()
  }, 30_000)
  afterAll(async () => { await browser?.close() })
  afterEach(() => cleanup.run())

  beforeEach(async () => {
    const { app: koa, rt } = createApp({ collab: GRACE })
    app = { rt }
    const srv = await listen(koa.callback())
    rt.attach(srv.server)
    srv.server.on('upgrade', (req: IncomingMessage, socket: Duplex) => {
      const user = /demo-user=([^;]+)/.exec(req.headers.cookie ?? '')?.[1] ?? 'anna'
      if (!sockets.has(user)) sockets.set(user, new Set())
      sockets.get(user)!.add(socket)
    })
    cleanup.add(() => srv.close())
    cleanup.add(() => rt.close(200))
    base = srv.base
    const r = await fetch(`${base}/api/projects/1/items`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-demo-user': 'anna' }, body: JSON.stringify({ title: 'Hero banner' }) })
    itemId = ((await r.json()) as { id: number }).id
  })

  async function context(): Promise<BrowserContext> {
    const c = await browser.newContext({ viewport: { width: 1180, height: 700 } })
    cleanup.add(() => c.close())
    return c
  }

  async function editorOf(ctx: BrowserContext, user: string, via = base, transport = 'websocket'): Promise<Page> {
    const page = await ctx.newPage()
    await page.goto(`${via}/?user=${user}&project=1`)
    await page.waitForFunction((t) => document.getElementById('badge')?.dataset.transport === t, transport, { timeout: 15_000 })
    await page.click(`#items li[data-item="${itemId}"]`)
    await page.waitForSelector('#editor:not([hidden])')
    return page
  }

  const editable = (page: Page) => page.evaluate(() => !(document.getElementById('edit-fields') as HTMLFieldSetElement).disabled)
  const viewers = (page: Page) => page.$$eval('#viewers li', (lis) => lis.map((li) => `${li.dataset.user}${li.classList.contains('you') ? '(you)' : ''}${li.classList.contains('editing') ? '(editing)' : ''}`).sort())
  const lockText = (page: Page) => page.textContent('#lock-text')
  async function until(page: Page, fn: () => Promise<boolean>, what: string, ms = 5000): Promise<number> {
    const t0 = Date.now()
    while (!(await fn())) {
      if (Date.now() - t0 > ms) throw new Error(`timed out: ${what}`)
      await page.waitForTimeout(20)
    }
    return Date.now() - t0
  }

  test('viewers, the lock refused to the second editor with the holder, takeover seen at once, a second tab shown as you', async () => {
    const anna = await editorOf(await context(), 'anna')
    await until(anna, () => editable(anna), 'anna holds the lock')
    const benCtx = await context()
    const ben = await editorOf(benCtx, 'ben')
    await until(ben, async () => (await viewers(ben)).join() === 'anna(editing)', 'ben sees anna editing')
    expect(await editable(ben)).toBe(false)
    expect(await lockText(ben)).toBe('anna is editing: read-only here.')
    await until(anna, async () => (await viewers(anna)).join() === 'ben', 'anna sees ben viewing')
    // Ben takes over: anna's page turns read-only at once, and says who.
    await ben.click('#take-over')
    await until(ben, () => editable(ben), 'ben holds the lock')
    const seen = await until(anna, async () => !(await editable(anna)), 'anna read-only', 2000)
    console.log(`takeover → the previous holder's page read-only in ${seen} ms`)
    expect(await lockText(anna)).toBe('ben took over editing: your changes are not saved.')
    // A second tab of anna's: her first tab shows as "you", not as someone else.
    const anna2 = await anna.context().newPage()
    await anna2.goto(`${base}/?user=anna&project=1`)
    await anna2.click(`#items li[data-item="${itemId}"]`)
    await until(anna2, async () => (await viewers(anna2)).join() === 'anna(you),ben(editing)', 'the second tab sees itself as you')
    await until(ben, async () => (await viewers(ben)).join() === 'anna', 'ben sees anna once, whatever her tabs')
  })

  test('closing the holder\'s page frees the lock and its presence at once; a killed connection only after the grace', async () => {
    const anna = await editorOf(await context(), 'anna')
    await until(anna, () => editable(anna), 'anna holds the lock')
    const benCtx = await context()
    const ben = await editorOf(benCtx, 'ben')
    await until(ben, async () => (await viewers(ben)).join() === 'anna(editing)', 'ben sees anna editing')
    // Closing the page: pagehide sends leave and unlock.
    const t0 = Date.now()
    await anna.close()
    await until(ben, async () => (await viewers(ben)).length === 0 && (await lockText(ben)) === 'Nobody is editing this item.', 'anna gone', 3000)
    const closed = Date.now() - t0
    console.log(`holder's page closed → lock and presence gone in ${closed} ms (grace ${GRACE.leaveGraceMs} ms)`)
    expect(closed).toBeLessThan(GRACE.leaveGraceMs)
    // Ben edits; then his connection dies without a close, and his page cannot come back.
    await ben.click('#take-over')
    await until(ben, () => editable(ben), 'ben holds the lock')
    const carl = await editorOf(await context(), 'carl')
    await until(carl, async () => (await viewers(carl)).join() === 'ben(editing)', 'carl sees ben editing')
    await ben.route('**/realtime/**', (route) => route.abort())
    const t1 = Date.now()
    for (const s of sockets.get('ben') ?? []) s.destroy()
    await until(carl, async () => (await lockText(carl)) === 'Nobody is editing this item.', 'ben\'s lock freed', GRACE.lockGraceMs + 3000)
    const killed = Date.now() - t1
    console.log(`holder's connection killed → lock freed in ${killed} ms (lock grace ${GRACE.lockGraceMs} ms)`)
    expect(killed).toBeGreaterThanOrEqual(GRACE.lockGraceMs - 100)
  })

  test('removing the holder from the project (the demo\'s DELETE member) frees his lock and presence within 1 s; his page turns read-only; the other editor can edit', async () => {
    const ben = await editorOf(await context(), 'ben')
    await until(ben, () => editable(ben), 'ben holds the lock')
    const anna = await editorOf(await context(), 'anna')
    await until(anna, async () => (await viewers(anna)).join() === 'ben(editing)', 'anna sees ben editing')
    expect(await lockText(anna)).toBe('ben is editing: read-only here.')
    const t0 = Date.now()
    const r = await fetch(`${base}/api/projects/1/members/ben`, { method: 'DELETE' })
    expect(r.status).toBe(204)
    const freed = await until(anna, async () => (await viewers(anna)).length === 0 && (await lockText(anna)) === 'Nobody is editing this item.', 'ben gone for anna', 3000)
    console.log(`member removed → his lock and presence gone for the other editor in ${Date.now() - t0} ms (page poll ${freed} ms)`)
    expect(Date.now() - t0).toBeLessThan(1000)
    // His page is told: read-only, and why.
    await until(ben, async () => !(await editable(ben)), 'ben read-only', 2000)
    expect(await lockText(ben)).toMatch(/access/)
    // Anna takes the lock and edits.
    await anna.click('#take-over')
    await until(anna, () => editable(anna), 'anna holds the lock', 2000)
    expect(await app.rt.locks.holder(`project:1/item:${itemId}`)).toMatchObject({ user: 'anna' })
    expect((await app.rt.presence(`project:1/item:${itemId}`)).map((m) => m.user)).toEqual(['anna'])
  })

  test('the stale-edit warning: a change through the API while anna edits is named at once, and her old save gets 409', async () => {
    const anna = await editorOf(await context(), 'anna')
    await until(anna, () => editable(anna), 'anna holds the lock')
    // Ben saves through the API (no lock: the API is not the editor).
    const r = await fetch(`${base}/api/projects/1/items/${itemId}`, {
      method: 'PUT', headers: { 'content-type': 'application/json', 'x-demo-user': 'ben' }, body: JSON.stringify({ title: 'Hero banner v2', revision: 1 }),
    })
    expect(r.status).toBe(200)
    await anna.waitForSelector('#stale-banner:not([hidden])', { timeout: 3000 })
    expect(await anna.textContent('#stale-text')).toBe('Changed by ben since you opened it.')
    // Her save with the revision she opened is refused by the server too.
    await anna.click('#stale-reload')
    expect(await anna.inputValue('#edit-form input[name=title]')).toBe('Hero banner v2')
    await anna.fill('#edit-form input[name=title]', 'Hero banner v3')
    await anna.click('#edit-fields button')
    await anna.waitForFunction(() => document.querySelector(`#items li.flash`)?.textContent === 'Hero banner v3', undefined, { timeout: 3000 })
    expect(await anna.isHidden('#stale-banner')).toBe(true)
    // A save from an old revision (what a tab with the socket down would send) gets 409 naming anna.
    const stale = await fetch(`${base}/api/projects/1/items/${itemId}`, {
      method: 'PUT', headers: { 'content-type': 'application/json', 'x-demo-user': 'ben' }, body: JSON.stringify({ title: 'late', revision: 2 }),
    })
    expect(stale.status).toBe(409)
    expect(await stale.json()).toMatchObject({ error: 'stale', updatedBy: 'anna', revision: 3 })
  })

  test('presence and locks on every transport: anna behind a proxy that strips upgrades (SSE), ben behind one that also holds streams (long polling), carl direct', async () => {
    const strip = await startUpgradeProxy(Number(new URL(base).port), { strip: true })
    const hold = await startUpgradeProxy(Number(new URL(base).port), { strip: true, hold: true })
    cleanup.add(() => strip.close())
    cleanup.add(() => hold.close())
    const anna = await editorOf(await context(), 'anna', strip.base, 'sse')
    await until(anna, () => editable(anna), 'anna, on SSE, holds the lock')
    const ben = await editorOf(await context(), 'ben', hold.base, 'poll')
    // The tab's own connection for presence steps down by itself too (the first-frame timeout, 5 s).
    await until(ben, async () => (await viewers(ben)).join() === 'anna(editing)', 'ben, polling, sees anna editing', 12_000)
    expect(await editable(ben)).toBe(false)
    expect(await lockText(ben)).toBe('anna is editing: read-only here.')
    const carl = await editorOf(await context(), 'carl')
    await until(carl, async () => (await viewers(carl)).join() === 'anna(editing),ben', 'carl, on the WebSocket, sees both')
    await until(anna, async () => (await viewers(anna)).join() === 'ben,carl', 'anna sees ben and carl')
    // The poller takes over: the SSE page turns read-only at once, and says who.
    await ben.click('#take-over')
    await until(ben, () => editable(ben), 'ben holds the lock')
    const seen = await until(anna, async () => !(await editable(anna)), 'anna read-only', 2000)
    console.log(`takeover by a polling tab → the SSE holder's page read-only in ${seen} ms`)
    expect(await lockText(anna)).toBe('ben took over editing: your changes are not saved.')
    await until(carl, async () => (await viewers(carl)).join() === 'anna,ben(editing)', 'carl sees ben editing')
    // The poller's page closes: its farewell frees the lock at once.
    const t0 = Date.now()
    await ben.close()
    await until(carl, async () => (await viewers(carl)).join() === 'anna' && (await lockText(carl)) === 'Nobody is editing this item.', 'ben gone', 3000)
    expect(Date.now() - t0).toBeLessThan(GRACE.leaveGraceMs)
  }, 40_000)
})
