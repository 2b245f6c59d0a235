/**
 * Smoke test of the demo CMS API, the same requests against the Koa demo
 * (examples/koa-cms) and the Express one (examples/express-cms): writes
 * answer 201 and arrive live on the topics a CMS UI subscribes to.
 */
import { createServer, type RequestListener } from 'node:http'
import request from 'supertest'
import { createApp as createExpressApp } from '../../examples/express-cms/app'
import { createApp as createKoaApp } from '../../examples/koa-cms/app'
import type { RealtimeHandle } from '../../lib/adapters/api'
import { connect, listen, Cleanup } from '../helpers/net'

const demos: Array<[string, () => { handler: RequestListener; rt: RealtimeHandle<unknown> }]> = [
  ['koa-cms', () => { const { app, rt } = createKoaApp(); return { handler: app.callback(), rt: rt as RealtimeHandle<unknown> } }],
  ['express-cms', () => { const { app, rt } = createExpressApp(); return { handler: app, rt: rt as RealtimeHandle<unknown> } }],
]

describe.each(demos)('%s demo API', (_name, create) => {
  const cleanup = new Cleanup()
  afterEach(() => cleanup.run())

  test('lists projects, and items, comments and notifications arrive live', async () => {
    const { handler, rt } = create()
    const srv = await listen(createServer(handler))
    rt.attach(srv.server)
    cleanup.add(() => srv.close())
    cleanup.add(() => rt.close())

    const list = await request(srv.base).get('/api/projects').expect(200)
    expect(list.body).toEqual([
      { id: 1, name: 'Spring campaign', itemCount: 0, commentCount: 0 },
      { id: 2, name: 'Product pages', itemCount: 0, commentCount: 0 },
    ])
    const anna = await connect(srv.port, { path: '/realtime?user=anna' })
    cleanup.add(() => anna.close())
    for (const topic of ['projects', 'project:1', 'notifications:anna']) {
      expect(await anna.subscribe(topic)).toMatchObject({ op: 'subscribed' })
    }

    const item = await request(srv.base).post('/api/projects/1/items').send({ title: 'Hero banner' }).expect(201)
    expect(await anna.op('event')).toMatchObject({ topic: 'project:1', type: 'item-added', data: { item: item.body } })
    expect(await anna.op('event')).toMatchObject({ topic: 'projects', data: { id: 1, itemCount: 1 } })

    await request(srv.base).post('/api/projects/1/comments').set('x-demo-user', 'ben').send({ text: 'Looks good' }).expect(201)
    expect(await anna.op('event')).toMatchObject({ type: 'comment-added', data: { comment: { text: 'Looks good', by: 'ben' } } })

    await request(srv.base).post('/api/notifications/anna').set('x-demo-user', 'ben').send({ text: 'Review please' }).expect(201)
    expect(await anna.next((f) => f.topic === 'notifications:anna')).toMatchObject({ type: 'notification', data: { from: 'ben' } })

    const detail = await request(srv.base).get('/api/projects/1').expect(200)
    expect(detail.body).toMatchObject({ items: [item.body], comments: [{ text: 'Looks good' }] })
  })

  test('bad input gets 400 and an unknown project 404, and nothing is published', async () => {
    const { handler, rt } = create()
    cleanup.add(() => rt.close())
    await request(handler).post('/api/projects/1/items').send({ title: '' }).expect(400)
    await request(handler).post('/api/projects/99/items').send({ title: 'x' }).expect(404)
    await request(handler).post('/api/notifications/bad%20id').send({ text: 'x' }).expect(400)
    expect(rt.stats().eventsPublished).toBe(0)
  })
})
