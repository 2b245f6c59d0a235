/**
 * The live Content Manager (cms-realtime/strapi-admin), in Chromium against
 * the real Strapi admin (examples/strapi, built by `npm run test:strapi`)
 * on PostgreSQL, with two admins in two browser contexts: Anna (the super
 * admin the example creates) and Ben (an Editor).
 *
 * - list view: a document Anna creates appears in Ben's list, an update
 *   changes it, a delete removes it, with no reload;
 * - edit view: each sees the other; the first to open holds the lock, the
 *   other sees the entry read-only (fields inert, Save disabled) and takes
 *   it over, and the holder is told at once; a tab that dies gives its lock
 *   up after the grace; a save made meanwhile shows the stale warning.
 *
 * The screenshot in the README is taken here (docs/strapi-admin.png).
 */
import { join } from 'node:path'
import { chromium, type Browser, type Page } from 'playwright-core'
import { ADMIN, CHROMIUM, CHROMIUM_ARGS, UID, addAdmin, describeStrapi, startStrapi, type Running } from './harness'

const BEN = { firstname: 'Ben', lastname: 'Hale', email: 'ben@example.com', password: 'Ben-pass-12' }
const LOCK_GRACE_MS = 2000
const list = `/admin/content-manager/collection-types/${UID}`

describeStrapi({ admin: true })('the live Content Manager (two admins, Chromium)', () => {
  let strapi: Running
  let browser: Browser
  let annaJwt: string
  let anna: Page
  let ben: Page
  const problems: string[] = []
  const timings: string[] = []

  async function signIn(who: { email: string; password: string }): Promise<Page> {
    const context = await browser.newContext({ viewport: { width: 1400, height: 900 } })
    const page = await context.newPage()
    page.on('pageerror', (e) => problems.push(`${who.email}: ${e.message}`))
    // Our routes must never fail in the admin (Strapi's own 404s for optional features are not ours).
    page.on('response', (r) => { if (r.url().includes('/realtime') && r.status() >= 400) problems.push(`${who.email}: ${r.status()} ${r.url()}`) })
    await page.goto(`${strapi.base}/admin/auth/login`)
    await page.fill('input[name=email]', who.email)
    await page.fill('input[name=password]', who.password)
    await page.click('button[type=submit]')
    await page.waitForURL((u) => !u.pathname.includes('/auth/'), { timeout: 20_000 })
    return page
  }

  const cm = (path: string, method = 'GET', body?: unknown) => strapi.api(`/content-manager/collection-types/${UID}${path}`, { method, token: annaJwt, body })

  beforeAll(async () => {
    strapi = await startStrapi('cms_realtime_strapi_admin_test', { SERVE_ADMIN_PANEL: 'true', REALTIME_LOCK_GRACE_MS: String(LOCK_GRACE_MS) })
    annaJwt = (await strapi.api('/admin/login', { method: 'POST', body: ADMIN })).body.data.token
    await addAdmin(strapi, annaJwt, BEN)
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS })
    anna = await signIn(ADMIN)
    ben = await signIn(BEN)
  }, 150_000)

  afterAll(async () => {
    await browser?.close()
    await strapi?.stop()
    for (const t of timings) console.log(t)
  })

  afterEach(() => expect(problems).toEqual([]))

  test("list view: what Anna creates, updates and deletes appears, changes and goes in Ben's list without a reload", async () => {
    await Promise.all([anna.goto(strapi.base + list), ben.goto(strapi.base + list)])
    for (const p of [anna, ben]) await p.waitForSelector('[data-cms-realtime=list][data-state=live]', { timeout: 20_000 })
    const row = (title: string) => ben.locator('tbody tr', { hasText: title })
    let t0 = Date.now()
    const created = await cm('', 'POST', { title: 'Written by Anna', body: 'first' })
    expect(created.status).toBe(201)
    const documentId = created.body.data.documentId as string
    await row('Written by Anna').waitFor({ timeout: 5000 })
    timings.push(`Anna creates → the row in Ben's list: ${Date.now() - t0} ms`)
    t0 = Date.now()
    expect((await cm(`/${documentId}`, 'PUT', { title: 'Renamed by Anna' })).status).toBe(200)
    await row('Renamed by Anna').waitFor({ timeout: 5000 })
    timings.push(`Anna updates → the row changes in Ben's list: ${Date.now() - t0} ms`)
    expect(await row('Written by Anna').count()).toBe(0)
    t0 = Date.now()
    expect((await cm(`/${documentId}`, 'DELETE')).status).toBe(200)
    await row('Renamed by Anna').waitFor({ state: 'detached', timeout: 5000 })
    timings.push(`Anna deletes → the row leaves Ben's list: ${Date.now() - t0} ms`)
  })

  test('edit view: presence both ways (per admin, tabs counted), the lock, read-only for the other, take over, the holder told at once', async () => {
    const { body } = await cm('', 'POST', { title: 'Shared entry', body: 'text' })
    const edit = `${strapi.base}${list}/${body.data.documentId as string}`
    await anna.goto(edit)
    await anna.waitForSelector('[data-cms-realtime=edit] [data-lock=mine]', { timeout: 20_000 })
    await anna.waitForSelector('[data-presence=alone]')
    await ben.goto(edit)
    // Ben: Anna holds it; the fields are out of reach and Save is disabled.
    await ben.waitForSelector('[data-lock=other]', { timeout: 20_000 })
    expect(await ben.textContent('[data-lock=other]')).toContain('Admin Example is editing this entry')
    await ben.waitForSelector('[data-member="Admin Example"]')
    await anna.waitForSelector('[data-member="Ben Hale"]', { timeout: 5000 })
    // Publish (enabled on a draft never published, for an editor who may publish) is the action to watch:
    // Strapi itself disables Save on an unchanged form.
    const publish = (p: typeof ben) => p.locator('button', { hasText: /^Publish$/ })
    expect(await ben.evaluate(() => document.querySelector('input[name=title]')!.closest('[inert]') !== null)).toBe(true)
    expect(await publish(ben).isDisabled()).toBe(true)
    expect(await anna.evaluate(() => document.querySelector('input[name=title]')!.closest('[inert]') !== null)).toBe(false)
    expect(await publish(anna).isDisabled()).toBe(false)
    // Anna has unsaved changes when Ben takes over.
    await anna.fill('input[name=title]', 'Anna was typing')
    // A second tab of Anna's: one admin, two tabs.
    const annaTab2 = await anna.context().newPage()
    await annaTab2.goto(edit)
    await ben.waitForSelector('[data-member="Admin Example"]:has-text("2 tabs")', { timeout: 10_000 })
    await annaTab2.close()
    await ben.waitForSelector('[data-member="Admin Example"]:not(:has-text("2 tabs"))', { timeout: 10_000 })
    // Ben takes over: Anna is told at once, and her form goes read-only.
    const t0 = Date.now()
    await ben.click('[data-lock=other] button')
    await anna.waitForSelector('[data-lock=lost]', { timeout: 5000 })
    timings.push(`Ben takes over → Anna is told: ${Date.now() - t0} ms`)
    expect(await anna.textContent('[data-lock=lost]')).toContain('Ben Hale took over')
    await ben.waitForSelector('[data-lock=mine]')
    expect(await anna.evaluate(() => document.querySelector('input[name=title]')!.closest('[inert]') !== null)).toBe(true)
    expect(await anna.locator('button', { hasText: /^Save$/ }).isDisabled()).toBe(true)
    expect(await publish(anna).isDisabled()).toBe(true)
    expect(await ben.evaluate(() => document.querySelector('input[name=title]')!.closest('[inert]') !== null)).toBe(false)
    expect(await publish(ben).isDisabled()).toBe(false)
    // Strapi's own save shortcuts (Ctrl+S, Ctrl+Enter) do not get past the lock either.
    const saves: string[] = []
    anna.on('request', (r) => { if (r.method() === 'PUT' && r.url().includes(`/content-manager/collection-types/${UID}/`)) saves.push(r.url()) })
    await anna.keyboard.press('Control+s')
    await anna.keyboard.press('Control+Enter')
    await anna.waitForTimeout(1000)
    expect(saves).toEqual([])
  })

  test('a save made meanwhile: the stale warning names who and what ("Admin Example changed title N s ago"); Reload takes the new version', async () => {
    const { body } = await cm('', 'POST', { title: 'Before', body: 'text' })
    const documentId = body.data.documentId as string
    await ben.goto(`${strapi.base}${list}/${documentId}`)
    await ben.waitForSelector('[data-lock=mine]', { timeout: 20_000 })
    await anna.goto(`${strapi.base}${list}/${documentId}`)
    await ben.waitForSelector('[data-member="Admin Example"]', { timeout: 10_000 })
    // Ben types, then Anna saves through the API (the Content Manager's own route).
    await ben.fill('input[name=title]', 'Ben is typing')
    const t0 = Date.now()
    expect((await cm(`/${documentId}`, 'PUT', { title: 'Anna saved this' })).status).toBe(200)
    await ben.waitForSelector('[data-stale]', { timeout: 5000 })
    timings.push(`Anna saves → Ben's stale warning: ${Date.now() - t0} ms`)
    expect(await ben.textContent('[data-stale]')).toMatch(/^Admin Example changed title \d+ s ago — reload or keep yours\./)
    // Ben's own typing is untouched until he chooses.
    expect(await ben.inputValue('input[name=title]')).toBe('Ben is typing')
    await ben.screenshot({ path: join(__dirname, '..', '..', 'docs', 'strapi-admin.png') })
    await ben.click('[data-stale] button:has-text("Reload")')
    await ben.waitForFunction(() => (document.querySelector('input[name=title]') as HTMLInputElement).value === 'Anna saved this', undefined, { timeout: 5000 })
    expect(await ben.locator('[data-stale]').count()).toBe(0)
  })

  test('a tab that dies (its renderer crashed) gives its lock up after the grace, and the other admin gets it', async () => {
    const { body } = await cm('', 'POST', { title: 'Crash test', body: 'text' })
    const edit = `${strapi.base}${list}/${body.data.documentId as string}`
    await ben.goto(edit)
    await ben.waitForSelector('[data-lock=mine]', { timeout: 20_000 })
    await anna.goto(edit)
    await anna.waitForSelector('[data-lock=other]', { timeout: 20_000 })
    const t0 = Date.now()
    // No pagehide, no close frame: the renderer is gone, as with a killed tab.
    const cdp = await ben.context().newCDPSession(ben)
    // The crash has no answer (the target is gone): do not wait for one.
    void cdp.send('Page.crash').catch(() => {})
    await anna.waitForSelector('[data-lock=mine]', { timeout: LOCK_GRACE_MS + 15_000 })
    const ms = Date.now() - t0
    timings.push(`Ben's tab crashes → Anna holds the lock: ${ms} ms (lockGraceMs ${LOCK_GRACE_MS})`)
    expect(ms).toBeGreaterThanOrEqual(LOCK_GRACE_MS - 500)
    expect(await anna.evaluate(() => document.querySelector('input[name=title]')!.closest('[inert]') !== null)).toBe(false)
  }, 40_000)
})
