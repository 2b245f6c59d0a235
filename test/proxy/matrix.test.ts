/**
 * The proxy matrix (#17): the demo page in real Chromium behind eight real
 * reverse-proxy setups from Debian's packages, each on a loopback port with
 * a config this test writes. Behind every one, an edit made by another
 * editor reaches the page without a reload (or the page says refresh), over
 * the transport that setup allows: a WebSocket wherever the proxy passes
 * one, SSE where it passes only plain HTTP, long polling where it holds
 * streamed responses. docs/proxies.md gives each recipe and symptom.
 */
import { execFileSync } from 'node:child_process'
import type { Browser, Page } from 'playwright-core'
import { createApp } from '../../examples/koa-cms/app'
import { Cleanup, listen } from '../helpers/net'
import { describeBrowser, launchChromium } from '../helpers/chromium'
import { readmeRecipe } from '../helpers/nginx'
import { missing, startApache, startCaddy, startHaproxy, startNginx, type Proxy } from '../helpers/proxies'

const ci = process.env.CI === 'true'
if (missing.length > 0 && !ci) console.log(`skipping the proxy matrix: ${missing.join(', ')} missing (apt-get install -y nginx apache2 haproxy caddy); under CI=true it runs and fails`)
const describeMatrix = missing.length === 0 || ci ? describeBrowser('the proxy matrix') : describe.skip

type Transport = 'websocket' | 'sse' | 'poll'

/** nginx without the upgrade headers (plain proxy_pass), Host kept so the page's origin matches. */
const nginxPlain = (app: number, extra = '') => (port: number) => `server {
  listen 127.0.0.1:${port};
  ${extra}
  location / { proxy_pass http://127.0.0.1:${app}; proxy_set_header Host $http_host; }
}`

const SETUPS: Array<{ name: string; start: (app: number) => Promise<Proxy>; transport: Transport; stepDown?: string }> = [
  {
    name: 'nginx, the README recipe',
    transport: 'websocket',
    start: (app) => startNginx((port) => readmeRecipe().replace('listen 8080;', `listen 127.0.0.1:${port};`).replace('http://127.0.0.1:3000', `http://127.0.0.1:${app}`)),
  },
  { name: 'nginx without the upgrade headers', transport: 'sse', start: (app) => startNginx(nginxPlain(app)) },
  {
    // nginx honours the stream's X-Accel-Buffering: no and flushes its gzip per event; a config that
    // overrides it (proxy_ignore_headers) while compressing the stream holds every byte, headers included.
    name: 'nginx without the upgrade headers, gzip on text/event-stream, buffering forced on',
    transport: 'poll',
    stepDown: 'buffering_proxy',
    start: (app) => startNginx(nginxPlain(app,
      'gzip on; gzip_min_length 1; gzip_types text/event-stream application/json; proxy_buffering on; proxy_ignore_headers X-Accel-Buffering;')),
  },
  {
    name: 'Apache mod_proxy_wstunnel',
    transport: 'websocket',
    start: (app) => startApache(app, {
      modules: ['rewrite', 'proxy_wstunnel'],
      directives: `  RewriteEngine on
  RewriteCond %{HTTP:Upgrade} websocket [NC]
  RewriteCond %{HTTP:Connection} upgrade [NC]
  RewriteRule ^/?(.*) "ws://127.0.0.1:{{APP}}/$1" [P,L]
  ProxyPass / http://127.0.0.1:{{APP}}/
  ProxyPassReverse / http://127.0.0.1:{{APP}}/`,
    }),
  },
  {
    name: 'Apache mod_proxy_http only',
    transport: 'sse',
    start: (app) => startApache(app, { modules: [], directives: '  ProxyPass / http://127.0.0.1:{{APP}}/\n  ProxyPassReverse / http://127.0.0.1:{{APP}}/' }),
  },
  {
    name: 'Apache mod_deflate on everything',
    transport: 'sse',
    start: (app) => startApache(app, {
      modules: ['filter', 'deflate'],
      directives: '  SetOutputFilter DEFLATE\n  ProxyPass / http://127.0.0.1:{{APP}}/\n  ProxyPassReverse / http://127.0.0.1:{{APP}}/',
    }),
  },
  { name: 'HAProxy, HTTP mode', transport: 'websocket', start: (app) => startHaproxy(app) },
  { name: 'Caddy reverse_proxy', transport: 'websocket', start: (app) => startCaddy(app) },
]

describeMatrix('the demo page behind real proxies, in Chromium', () => {
  let browser: Browser
  const cleanup = new Cleanup()
  beforeAll(async () => {
    execFileSync(process.execPath, ['scripts/build-client.mjs'], { stdio: 'ignore' })
    browser = await launchChromium()
  }, 30_000)
  afterAll(async () => { await browser?.close() })
  afterEach(() => cleanup.run())

  test.each(SETUPS)('$name: an edit reaches the page over $transport', async ({ start, transport, stepDown }) => {
    const { app, rt } = createApp()
    const srv = await listen(app.callback())
    rt.attach(srv.server)
    cleanup.add(() => srv.close())
    cleanup.add(() => rt.close(200))
    const proxy = await start(srv.port)
    cleanup.add(() => proxy.stop())
    const context = await browser.newContext()
    cleanup.add(() => context.close())
    const page: Page = await context.newPage()
    const errors: string[] = []
    page.on('pageerror', (e) => errors.push(e.message))
    const t0 = Date.now()
    await page.goto(`${proxy.base}/?user=anna`)
    // Settled on the transport this setup allows, within the ladder's timeouts (never `connecting` for good).
    await page.waitForFunction((t) => document.getElementById('badge')?.dataset.transport === t, transport, { timeout: 15_000 })
    const settledMs = Date.now() - t0
    const seen = await page.evaluate(() => {
      const rt = (window as unknown as { rt: { state: string; transport: string; diagnosis: { stepDown?: { cause: string } } | null } }).rt
      return { state: rt.state, transport: rt.transport, stepDown: rt.diagnosis?.stepDown?.cause }
    })
    expect(seen).toEqual({ state: transport === 'websocket' ? 'live' : 'fallback', transport, stepDown })
    const text = `via ${transport} ${Date.now()}`
    const posted = await fetch(`${proxy.base}/api/projects/1/comments`, {
      method: 'POST', headers: { 'content-type': 'application/json', 'x-demo-user': 'ben' }, body: JSON.stringify({ text }),
    })
    expect(posted.status).toBeLessThan(300)
    const sent = Date.now()
    await page.locator('#comments li', { hasText: text }).waitFor({ timeout: 5000 })
    console.log(`${transport} settled in ${settledMs} ms; the edit arrived in ${Date.now() - sent} ms`)
    expect(await page.locator('#badge').getAttribute('data-transport')).toBe(transport)
    expect(errors).toEqual([])
  }, 40_000)
})
