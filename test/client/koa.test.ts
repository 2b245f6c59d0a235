/**
 * Through the Koa adapter (the demo CMS): the SSE fallback authenticates
 * with the Koa ctx after the app's middleware ran, and applies per-topic
 * authorisation exactly like the WebSocket; the client works end to end.
 */
import { createServer } from 'node:http'
import { createApp } from '../../examples/koa-cms/app'
import { Cleanup, listen } from '../helpers/net'
import { client, collect, waitFor } from './helpers'

const cleanup = new Cleanup()
afterEach(() => cleanup.run())

async function demo(options: Parameters<typeof createApp>[0] = {}) {
  const { app, rt } = createApp(options)
  const srv = await listen(createServer(app.callback()))
  cleanup.add(() => srv.close())
  cleanup.add(() => rt.close())
  return { rt, srv }
}

test("SSE authenticates with the app's ctx: a user reads their own notifications, not another's", async () => {
  const { srv } = await demo()
  const own = await fetch(`${srv.base}/realtime/events?topics=notifications:bob`, { headers: { 'x-demo-user': 'bob' } })
  expect(own.status).toBe(200)
  expect(own.headers.get('content-type')).toMatch(/^text\/event-stream/)
  await own.body?.cancel()
  const other = await fetch(`${srv.base}/realtime/events?topics=notifications:bob`, { headers: { 'x-demo-user': 'anna' } })
  expect(other.status).toBe(403)
  expect(await other.json()).toMatchObject({ error: 'forbidden' })
})

test('the client on the demo CMS, WebSocket disabled with fallbackWhenDisabled: it streams over SSE and gets the API writes', async () => {
  const { rt, srv } = await demo({ webSocketEnabled: false, fallbackWhenDisabled: true })
  const c = client(srv.base)
  cleanup.add(() => c.close())
  const got = collect(c, 'project:1')
  await waitFor(() => c.state === 'fallback' && rt.stats().subscriptions === 1, 'subscribed over SSE')
  const r = await fetch(`${srv.base}/api/projects/1/items`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ title: 'Hero banner' }),
  })
  expect(r.status).toBe(201)
  await waitFor(() => got.length === 1, 'the item-added event')
  expect(got[0]).toMatchObject({ type: 'item-added', data: { projectId: 1, item: { title: 'Hero banner' } } })
  expect(c.diagnosis).toEqual({ cause: 'disabled' })
})
