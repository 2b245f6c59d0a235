/**
 * The middleware serves the built client at <path>/client.js, so a page can
 * import it without a bundler; revalidated by ETag.
 */
import { execFileSync } from 'node:child_process'
import { Cleanup } from '../helpers/net'
import { startApp } from './helpers'

const cleanup = new Cleanup()
afterEach(() => cleanup.run())

beforeAll(() => {
  execFileSync(process.execPath, ['scripts/build-client.mjs'], { stdio: 'ignore' })
}, 30_000)

test('GET <path>/client.js answers the minified ESM client with an ETag; a matching If-None-Match gets 304', async () => {
  const a = await startApp()
  cleanup.add(() => a.srv.close())
  cleanup.add(() => a.rt.close())
  const r = await fetch(`${a.srv.base}/realtime/client.js`)
  expect(r.status).toBe(200)
  expect(r.headers.get('content-type')).toBe('text/javascript; charset=utf-8')
  const text = await r.text()
  expect(text).toMatch(/export\s*\{[^}]*createClient/)
  expect(text).not.toMatch(/require\(|node:/)
  const etag = r.headers.get('etag')!
  const again = await fetch(`${a.srv.base}/realtime/client.js`, { headers: { 'If-None-Match': etag } })
  expect(again.status).toBe(304)
  expect((await fetch(`${a.srv.base}/realtime/client.js`, { method: 'POST' })).status).toBe(405)
})
