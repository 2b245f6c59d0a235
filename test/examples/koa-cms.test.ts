/**
 * Smoke test of the demo (`npm start`): the README's promise that an API
 * write reaches every editor who is looking, through the Koa middleware.
 */
import { createApp } from '../../examples/koa-cms/app'
import { connect as rawConnect } from 'node:net'
import { connect, listen, type Listening, type TestClient } from '../helpers/net'

let srv: Listening
let close: () => Promise<void>
const clients: TestClient[] = []
afterEach(async () => {
  for (const c of clients.splice(0)) c.close()
  await close()
})

async function start(options = {}) {
  const { app, rt } = createApp(options)
  srv = await listen(app.callback() as never)
  close = async () => { await rt.close(200); await srv.close() }
  return rt
}

test('config first (which attaches the channel lazily), then a write reaches subscribers live', async () => {
  const rt = await start()
  const cfg = await fetch(`${srv.base}/realtime/config`).then((r) => r.json())
  expect(cfg).toMatchObject({ webSocketEnabled: true, url: '/realtime' })
  const editor = await connect(srv.port, { path: cfg.url, headers: { 'x-demo-user': 'anna' } })
  clients.push(editor)
  await editor.subscribe('projects')
  await editor.subscribe('project:1')
  const res = await fetch(`${srv.base}/api/projects/1/items`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ title: 'Hero banner' }),
  })
  expect(res.status).toBe(201)
  expect(await editor.op('event')).toMatchObject({ topic: 'project:1', type: 'item-added', data: { item: { title: 'Hero banner' } } })
  expect(await editor.op('event')).toMatchObject({ topic: 'projects', type: 'project-updated', data: { id: 1, itemCount: 1 } })
  expect(rt.stats().connections).toBe(1)
})

test('the upgrade passes the app\'s middleware: authenticate sees ctx.state.user, so notifications are per user', async () => {
  await start()
  await fetch(`${srv.base}/realtime/config`)
  const bob = await connect(srv.port, { headers: { 'x-demo-user': 'bob' } })
  clients.push(bob)
  expect(await bob.subscribe('notifications:anna')).toMatchObject({ op: 'error', code: 'forbidden' })
  expect(await bob.subscribe('notifications:bob')).toMatchObject({ op: 'subscribed' })
  await fetch(`${srv.base}/api/notifications/bob`, {
    method: 'POST', headers: { 'content-type': 'application/json', 'x-demo-user': 'anna' }, body: JSON.stringify({ text: 'review please' }),
  })
  expect(await bob.op('event')).toMatchObject({ type: 'notification', data: { text: 'review please', from: 'anna' } })
})

test('bad API input gets a 400, and comments publish to the project topic', async () => {
  await start()
  await fetch(`${srv.base}/realtime/config`)
  const c = await connect(srv.port)
  clients.push(c)
  await c.subscribe('project:2')
  const bad = await fetch(`${srv.base}/api/projects/2/comments`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' })
  expect(bad.status).toBe(400)
  await fetch(`${srv.base}/api/projects/2/comments`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ text: 'Looks good' }) })
  expect(await c.op('event')).toMatchObject({ type: 'comment-added', data: { comment: { text: 'Looks good', by: 'anna' } } })
})

test('with the channel off the demo says manual-refresh and refuses upgrades with 503', async () => {
  await start({ webSocketEnabled: false })
  const cfg = await fetch(`${srv.base}/realtime/config`).then((r) => r.json())
  expect(cfg).toMatchObject({ webSocketEnabled: false, mode: 'manual-refresh' })
  await expect(connect(srv.port)).rejects.toMatchObject({ status: 503 })
})

test('malformed and pipelined requests (HTTP parser errors) get Node\'s 400 and print nothing on stderr', async () => {
  await start()
  const printed: unknown[] = []
  const spy = jest.spyOn(console, 'error').mockImplementation((...args: unknown[]) => { printed.push(args) })
  try {
    const bad = [
      'GET /api/projects HTTP/1.1\r\nHost: x\r\n\r\nGET /api/projects HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n',
      'GET /api/projects HTTP/1.1\r\nHost: x\r\n\r\nPOST /api/projects/1/items HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n',
      'POST /api/projects/1/items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"title":',
      'GET /api/projects HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n',
    ]
    for (const text of bad) {
      await new Promise<void>((resolve) => {
        const s = rawConnect(srv.port, '127.0.0.1')
        s.on('error', () => {})
        s.on('close', () => resolve())
        s.write(text)
        setTimeout(() => s.end(), 200)
        setTimeout(() => s.destroy(), 1000) // whatever the server does, the test goes on
      })
    }
    await new Promise((r) => setTimeout(r, 100))
    expect(printed).toEqual([])
  } finally {
    spy.mockRestore()
  }
})
