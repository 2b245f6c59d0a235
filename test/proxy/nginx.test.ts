/**
 * Behind a real nginx (issue #8, defect 10): the README's recipe on a
 * non-default port goes live in Chromium; the common broken config (plain
 * proxy_pass: no upgrade headers, response buffering on) is diagnosed as
 * stripped_upgrade and events still arrive over SSE within a second; a short
 * proxy_read_timeout does not close an idle socket, because pings keep it busy.
 */
import { existsSync } from 'node:fs'
import { chromium, type Browser } from 'playwright-core'
import WebSocket from 'ws'
import { EventSource } from 'eventsource'
import { createClient, type RealtimeClient, type RealtimeEvent } from 'cms-realtime/client'
import type { KoaRealtimeOptions } from 'cms-realtime/koa'
import { createApp } from '../../examples/koa-cms/app'
import { Cleanup, connect, handshake, listen, rawRequest } from '../helpers/net'
import { nginxAvailable, readmeRecipe, startNginx, type Nginx } from '../helpers/nginx'
import { waitFor } from '../client/helpers'

const CHROMIUM = '/usr/bin/chromium'
const ci = process.env.CI === 'true'
if (!nginxAvailable && !ci) console.log('skipping the nginx tests: /usr/sbin/nginx is missing (apt-get install -y nginx); under CI=true they run and fail')
const describeNginx = nginxAvailable || ci ? describe : describe.skip

const cleanup = new Cleanup()
afterEach(() => cleanup.run())

async function demo(options: KoaRealtimeOptions = {}, proxy = false) {
  const { app, rt } = createApp(options)
  app.proxy = proxy
  const srv = await listen(app.callback())
  rt.attach(srv.server)
  cleanup.add(() => srv.close())
  cleanup.add(() => rt.close(200))
  return { srv, rt }
}

/** The README's block with its listen port and upstream pointed at this test's. */
function recipe(appPort: number, edit: (conf: string) => string = (c) => c): (port: number) => string {
  return (port) => edit(readmeRecipe()
    .replace('listen 8080;', `listen 127.0.0.1:${port};`)
    .replace('http://127.0.0.1:3000', `http://127.0.0.1:${appPort}`))
}

async function nginx(block: (port: number) => string): Promise<Nginx> {
  const n = await startNginx(block)
  cleanup.add(() => n.stop())
  return n
}

function client(base: string): RealtimeClient {
  const c = createClient({ configUrl: `${base}/realtime/config`, WebSocket, EventSource, backoff: { initialMs: 50, maxMs: 400 } })
  cleanup.add(() => c.close())
  return c
}

describeNginx('behind nginx', () => {
  test('the README recipe keeps the port in Host: a handshake from the page origin gets 101', async () => {
    const { srv } = await demo()
    const n = await nginx(recipe(srv.port))
    expect((await rawRequest(n.port, handshake(n.port, '/realtime', { Origin: n.base }))).status).toBe(101)
  })

  test('the old recipe ($host drops the port) is refused as cross-origin, unless the app trusts its proxy', async () => {
    const old = (c: string) => c.replace('proxy_set_header Host $http_host;', 'proxy_set_header Host $host;')
    const untrusted = await demo()
    const n1 = await nginx(recipe(untrusted.srv.port, old))
    // nginx keeps the client connection alive after relaying the 403: read for a moment only.
    const res = await rawRequest(n1.port, handshake(n1.port, '/realtime', { Origin: n1.base }), 500)
    expect(res.status).toBe(403)
    expect(JSON.parse(res.body)).toMatchObject({ error: 'origin' })
    const trusted = await demo({}, true) // Koa app.proxy: X-Forwarded-Host (with the port) is believed
    const n2 = await nginx(recipe(trusted.srv.port, old))
    expect((await rawRequest(n2.port, handshake(n2.port, '/realtime', { Origin: n2.base }))).status).toBe(101)
  })

  test('the common broken config (plain proxy_pass, buffering on): diagnosed stripped_upgrade, events arrive over SSE within a second', async () => {
    const { srv, rt } = await demo()
    const n = await nginx((port) => `server { listen 127.0.0.1:${port}; location / { proxy_pass http://127.0.0.1:${srv.port}; } }`)
    const c = client(n.base)
    const got: Array<RealtimeEvent & { at: number }> = []
    c.subscribe('project:1', (e) => got.push({ ...e, at: performance.now() }))
    await waitFor(() => c.state === 'fallback' && rt.stats().fallbackStreams === 1 && rt.stats().subscriptions === 1, 'fallback over SSE')
    await waitFor(() => c.diagnosis !== null, 'a diagnosis')
    expect(c.diagnosis).toEqual({ cause: 'stripped_upgrade' })
    expect(rt.stats().strippedUpgrades).toBeGreaterThanOrEqual(1)
    const sent = performance.now()
    await rt.publish('project:1', 'item-added', { n: 1 })
    await waitFor(() => got.length === 1, 'the event over SSE', 1000)
    expect(got[0]!.at - sent).toBeLessThan(1000)
  })

  test.each([
    ['pings every 300 ms keep an idle socket open through proxy_read_timeout 1s', 300, true],
    ['without pings inside the timeout nginx closes it (the control)', 10_000, false],
  ])('%s', async (_t, heartbeatMs, survives) => {
    const { srv, rt } = await demo({ heartbeatMs })
    const n = await nginx(recipe(srv.port, (c) => c.replace('proxy_read_timeout 75s;', 'proxy_read_timeout 1s;')))
    const ws = await connect(n.port, { headers: { Origin: n.base } })
    cleanup.add(() => ws.close())
    await ws.subscribe('projects')
    await new Promise((r) => setTimeout(r, 2500))
    if (!survives) {
      expect(ws.closeCode).toBeDefined()
      return
    }
    expect(ws.closeCode).toBeUndefined()
    await rt.publish('projects', 'project-updated', { id: 1 })
    expect(await ws.op('event')).toMatchObject({ topic: 'projects' })
  })

  const describeBrowser = existsSync(CHROMIUM) || ci ? describe : describe.skip
  describeBrowser('in Chromium', () => {
    let browser: Browser
    beforeAll(async () => {
      browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-quic'] })
    }, 30_000)
    afterAll(async () => { await browser?.close() })

    test('the demo through the README recipe on a non-default port is live, and an edit shows without a reload', async () => {
      const { srv } = await demo()
      const n = await nginx(recipe(srv.port))
      const context = await browser.newContext()
      cleanup.add(() => context.close())
      const page = await context.newPage()
      const errors: string[] = []
      page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()) })
      await page.goto(`${n.base}/?user=anna`)
      await page.waitForFunction(() => document.getElementById('badge')?.dataset.state === 'live', undefined, { timeout: 10_000 })
      await fetch(`${n.base}/api/projects/1/comments`, {
        method: 'POST', headers: { 'content-type': 'application/json', 'x-demo-user': 'ben' }, body: JSON.stringify({ text: 'via nginx' }),
      })
      await page.locator('#comments li', { hasText: 'via nginx' }).waitFor({ timeout: 5000 })
      expect(await page.evaluate(() => (window as unknown as { rt: { diagnosis: unknown } }).rt.diagnosis)).toBeNull()
      expect(errors).toEqual([])
    })
  })
})
