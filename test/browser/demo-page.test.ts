/**
 * The demo CMS page (examples/koa-cms, `npm start`) in real Chromium: two
 * editors see each other's comments and the overview's counts without a
 * reload; a notification reaches only its user's bell (the page's realtime
 * requests are made as the signed-in user); with the channel switched off
 * the badge says manual-refresh and the banner asks for a refresh; behind
 * a proxy that strips upgrades it says fallback and names the proxy; after
 * Sign out it says signed-out and receives nothing more; removed from a
 * project, an editor stops getting that project's events.
 */
import { execFileSync } from 'node:child_process'
import { mkdirSync } from 'node:fs'
import { type Browser, type Page } from 'playwright-core'
import type { KoaRealtimeOptions } from 'cms-realtime/koa'
import { createApp } from '../../examples/koa-cms/app'
import { Cleanup, listen } from '../helpers/net'
import { describeBrowser, launchChromium } from '../helpers/chromium'
import { startBehindProxy } from '../../examples/behind-proxy/start'

const ARTIFACTS = 'test-artifacts'


describeBrowser('the demo page tests')('the demo page in Chromium', () => {
  let browser: Browser
  const cleanup = new Cleanup()
  const errors = new Map<Page, string[]>()
  let socketMayFail = false

  beforeAll(async () => {
    // The page loads the bundle the middleware serves from dist/ (npm start builds it the same way).
    execFileSync(process.execPath, ['scripts/build-client.mjs'], { stdio: 'ignore' })
    browser = await launchChromium()
  }, 30_000)
  afterAll(async () => { await browser?.close() })
  afterEach(async () => {
    // Chromium itself logs a failed handshake; behind the stripping proxy that is the point.
    const seen = [...errors.values()].flat().filter((m) => !(socketMayFail && /^WebSocket connection to .* failed/.test(m)))
    errors.clear()
    socketMayFail = false
    await cleanup.run()
    expect(seen).toEqual([]) // no script error, no failed request
  })

  async function demo(options: KoaRealtimeOptions = {}): Promise<string> {
    const { app, rt } = createApp(options)
    const srv = await listen(app.callback())
    rt.attach(srv.server)
    cleanup.add(() => srv.close())
    cleanup.add(() => rt.close(200))
    return srv.base
  }

  /** A page in its own browser context, so each user has their own cookie, as two people would. */
  async function open(url: string): Promise<Page> {
    const context = await browser.newContext({ viewport: { width: 1180, height: 500 } })
    cleanup.add(() => context.close())
    const page = await context.newPage()
    const list: string[] = []
    errors.set(page, list)
    page.on('pageerror', (e) => list.push(e.message))
    page.on('console', (m) => { if (m.type() === 'error') list.push(m.text()) })
    await page.goto(url)
    // A marker a reload would lose.
    await page.evaluate(() => { (window as unknown as { marker: number }).marker = 1 })
    return page
  }

  const badge = (page: Page) => page.locator('#badge')
  const live = async (page: Page) => {
    await page.waitForFunction(() => document.getElementById('badge')?.dataset.state === 'live', undefined, { timeout: 10_000 })
  }
  const notReloaded = (page: Page) => page.evaluate(() => (window as unknown as { marker?: number }).marker === 1)

  async function submit(page: Page, form: string, values: Record<string, string>): Promise<void> {
    for (const [name, value] of Object.entries(values)) await page.fill(`#${form} [name="${name}"]`, value)
    await page.click(`#${form} button`)
    // The page resets the form once the write is answered: wait for that, or
    // a reset landing after the next fill would submit an empty form.
    const last = Object.keys(values).at(-1)!
    await page.waitForFunction(([f, n]) => (document.querySelector(`#${f} [name="${n}"]`) as HTMLInputElement).value === '', [form, last], { timeout: 5000 })
  }

  test('a comment added in one window appears in the other without a reload, and the overview count follows an item', async () => {
    const base = await demo()
    const anna = await open(`${base}/?user=anna`)
    const ben = await open(`${base}/?user=ben`)
    await live(anna)
    await live(ben)
    expect(await anna.locator('#user').textContent()).toBe('anna')

    await submit(ben, 'comment-form', { text: 'Hero copy looks good' })
    await anna.locator('#comments li', { hasText: 'Hero copy looks good' }).waitFor({ timeout: 5000 })
    expect(await anna.locator('#comments li').first().innerText()).toMatch(/^ben Hero copy looks good$/)

    // Ben looks at project 2; an item added there by anna updates his overview and his list.
    await ben.click('#projects li[data-project="2"] a')
    await ben.locator('#project-name', { hasText: 'Product pages' }).waitFor({ timeout: 5000 })
    await anna.click('#projects li[data-project="2"] a')
    await submit(anna, 'item-form', { title: 'Pricing table' })
    await ben.locator('#items li', { hasText: 'Pricing table' }).waitFor({ timeout: 5000 })
    await ben.locator('#projects li[data-project="2"] .n', { hasText: '1 item' }).waitFor({ timeout: 5000 })
    await submit(ben, 'item-form', { title: 'Feature grid' })
    await anna.locator('#projects li[data-project="2"] .n', { hasText: '2 items' }).waitFor({ timeout: 5000 })
    await anna.locator('#items li', { hasText: 'Feature grid' }).waitFor({ timeout: 5000 })
    expect(await notReloaded(anna)).toBe(true)
    expect(await notReloaded(ben)).toBe(true)
    expect(await badge(anna).textContent()).toBe('live')

    // A tidy state for the screenshot: a bit more content, and anna's bell with something in it.
    await anna.click('#projects li[data-project="1"] a')
    await submit(anna, 'item-form', { title: 'Spring hero banner' })
    await submit(anna, 'item-form', { title: 'Newsletter teaser' })
    await submit(ben, 'note-form', { to: 'anna', text: 'Can you review the pricing table?' })
    await submit(anna, 'comment-form', { text: 'Banner copy is final' })
    await anna.locator('#bell-count', { hasText: '1' }).waitFor({ timeout: 5000 })
    await anna.locator('#projects li[data-project="1"] .n', { hasText: '2 items' }).waitFor({ timeout: 5000 })
    mkdirSync(ARTIFACTS, { recursive: true })
    await anna.waitForTimeout(1300) // let the highlight fade
    await anna.screenshot({ path: `${ARTIFACTS}/demo-page.png` })
  }, 30_000)

  test('the tabs of one browser share one connection: three tabs of anna, one connection; an event shows in each', async () => {
    const base = await demo()
    const first = await open(`${base}/?user=anna`)
    const tabs = [first, await first.context().newPage(), await first.context().newPage()]
    for (const tab of tabs.slice(1)) await tab.goto(`${base}/?user=anna`)
    for (const tab of tabs) await live(tab)
    const stats = await (await fetch(`${base}/api/stats`)).json() as { connections: number }
    expect(stats.connections).toBe(1)
    await submit(tabs[0]!, 'comment-form', { text: 'Seen in every tab' })
    for (const tab of tabs) await tab.locator('#comments li', { hasText: 'Seen in every tab' }).waitFor({ timeout: 5000 })
  })

  test('a notification reaches only the bell of the user it is for', async () => {
    const base = await demo()
    const anna = await open(`${base}/?user=anna`)
    const ben = await open(`${base}/?user=ben`)
    await live(anna)
    await live(ben)
    await submit(ben, 'note-form', { to: 'anna', text: 'Please review' })
    await anna.locator('#bell-count', { hasText: '1' }).waitFor({ timeout: 5000 })
    // Ben's page connects as ben (the default user is anna): his bell works, and anna's note is not in it.
    await submit(anna, 'note-form', { to: 'ben', text: 'Done' })
    await ben.locator('#bell-count', { hasText: '1' }).waitFor({ timeout: 5000 })
    await ben.click('#bell-button')
    await anna.click('#bell-button')
    expect(await ben.locator('#bell-list li').allInnerTexts()).toEqual(['anna: Done'])
    expect(await anna.locator('#bell-list li').allInnerTexts()).toEqual(['ben: Please review'])
    expect(await ben.locator('#bell-count').isHidden()).toBe(true) // seen once opened
  })

  test('after Sign out the page says signed-out and receives nothing more; Sign in again brings it back', async () => {
    const base = await demo()
    const anna = await open(`${base}/?user=anna`)
    const ben = await open(`${base}/?user=ben`)
    await live(anna)
    await live(ben)
    const t0 = Date.now()
    await anna.click('#sign-out')
    await anna.waitForFunction(() => document.getElementById('badge')?.dataset.state === 'signed-out', undefined, { timeout: 5000 })
    const ms = Date.now() - t0
    expect(ms).toBeLessThan(1000)
    expect(await anna.locator('#signed-out').isVisible()).toBe(true)
    await submit(ben, 'comment-form', { text: 'after the logout' })
    await ben.locator('#comments li', { hasText: 'after the logout' }).waitFor({ timeout: 5000 })
    await anna.waitForTimeout(500)
    expect(await anna.locator('#comments li', { hasText: 'after the logout' }).count()).toBe(0)
    mkdirSync(ARTIFACTS, { recursive: true })
    await anna.screenshot({ path: `${ARTIFACTS}/demo-page-signed-out.png` })

    await anna.click('#sign-in')
    await live(anna)
    // Signing in refetches, so the comment made while away shows, and live events flow again.
    await anna.locator('#comments li', { hasText: 'after the logout' }).waitFor({ timeout: 5000 })
    await submit(ben, 'comment-form', { text: 'welcome back' })
    await anna.locator('#comments li', { hasText: 'welcome back' }).waitFor({ timeout: 5000 })
    expect(await notReloaded(anna)).toBe(true)
  })

  test("removed from a project, an editor's open page stops getting that project's events at once; the overview still updates", async () => {
    const base = await demo()
    const anna = await open(`${base}/?user=anna`)
    const ben = await open(`${base}/?user=ben`)
    await live(anna)
    await live(ben)
    const r = await fetch(`${base}/api/projects/1/members/ben`, { method: 'DELETE', headers: { 'x-demo-user': 'anna' } })
    expect(r.status).toBe(204)
    await ben.locator('#error', { hasText: 'no longer have access' }).waitFor({ timeout: 1000 })
    await submit(anna, 'item-form', { title: 'members only' })
    await anna.locator('#items li', { hasText: 'members only' }).waitFor({ timeout: 5000 })
    await ben.locator('#projects li[data-project="1"] .n', { hasText: '1 item' }).waitFor({ timeout: 5000 })
    expect(await ben.locator('#items li', { hasText: 'members only' }).count()).toBe(0)
    expect(await badge(ben).textContent()).toBe('live')
    expect(await notReloaded(ben)).toBe(true)
  })

  test('with the channel switched off: manual-refresh badge, the refresh banner, and Refresh shows others\' changes', async () => {
    const base = await demo({ webSocketEnabled: false })
    const page = await open(`${base}/?user=anna`)
    await page.waitForFunction(() => document.getElementById('badge')?.dataset.state === 'manual-refresh', undefined, { timeout: 10_000 })
    expect(await badge(page).textContent()).toBe('manual-refresh')
    expect(await page.locator('#banner').innerText()).toContain('Refresh to see changes')
    expect(await page.locator('#banner').isVisible()).toBe(true)
    await fetch(`${base}/api/projects/1/comments`, {
      method: 'POST', headers: { 'content-type': 'application/json', 'x-demo-user': 'ben' }, body: JSON.stringify({ text: 'from elsewhere' }),
    })
    await page.click('#refresh')
    await page.locator('#comments li', { hasText: 'from elsewhere' }).waitFor({ timeout: 5000 })
    expect(await notReloaded(page)).toBe(true)
    mkdirSync(ARTIFACTS, { recursive: true })
    await page.screenshot({ path: `${ARTIFACTS}/demo-page-manual-refresh.png` })
  })

  test('behind the upgrade-stripping proxy (examples/behind-proxy): fallback badge, a hint naming the proxy, and changes still arrive', async () => {
    socketMayFail = true
    const demoBehind = await startBehindProxy()
    cleanup.add(() => demoBehind.close())
    const page = await open(`${demoBehind.proxy.base}/?user=anna`)
    await page.waitForFunction(() => document.getElementById('badge')?.dataset.state === 'fallback', undefined, { timeout: 10_000 })
    await page.locator('#diagnosis', { hasText: 'dropped the WebSocket upgrade' }).waitFor({ timeout: 5000 })
    await fetch(`${demoBehind.proxy.base}/api/projects/1/comments`, {
      method: 'POST', headers: { 'content-type': 'application/json', 'x-demo-user': 'ben' }, body: JSON.stringify({ text: 'over SSE' }),
    })
    await page.locator('#comments li', { hasText: 'over SSE' }).waitFor({ timeout: 5000 })
    expect(await page.locator('#banner').isHidden()).toBe(true)
    expect(await notReloaded(page)).toBe(true)
    mkdirSync(ARTIFACTS, { recursive: true })
    await page.screenshot({ path: `${ARTIFACTS}/demo-page-behind-proxy.png` })
  })
})
