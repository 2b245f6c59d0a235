/**
 * Adapter parity: the same behaviour through every adapter, one suite run
 * against Koa, Express 5 and Express 4 (see harness.ts).
 */
import request from 'supertest'
import { connect, handshake, rawRequest, Cleanup } from '../helpers/net'
import { harnesses, type AppSpec, type Harness, type Started } from './harness'

describe.each(harnesses)('$name adapter', (h: Harness) => {
  const cleanup = new Cleanup()
  afterEach(() => cleanup.run())
  const start = async (spec?: AppSpec): Promise<Started> => {
    const app = await h.start(spec)
    cleanup.add(() => app.close())
    return app
  }

  test('an upgrade runs through the app middleware: authenticate sees the user it set, and events arrive', async () => {
    const app = await start()
    const client = await connect(app.port, { headers: { 'x-user': 'anna' } })
    cleanup.add(() => client.close())
    // notifications:anna is only for anna, so this also proves the user reached the core.
    expect(await client.subscribe('notifications:anna')).toMatchObject({ op: 'subscribed' })
    expect(await client.subscribe('notifications:ben')).toMatchObject({ op: 'error', code: 'forbidden' })
    await app.rt.publish('notifications:anna', 'note', { text: 'hi' })
    expect(await client.op('event')).toMatchObject({ topic: 'notifications:anna', type: 'note', data: { text: 'hi' } })
  })

  test('authenticate returning no user refuses the upgrade with 401', async () => {
    const app = await start()
    await expect(connect(app.port)).rejects.toMatchObject({ status: 401 })
    expect(app.rt.stats().refusals.unauthenticated).toBe(1)
  })

  test('app middleware answering 401 before ours reaches the raw client whole, and the socket closes', async () => {
    const app = await start({ gate: true })
    const res = await rawRequest(app.port, handshake(app.port))
    expect(res.status).toBe(401)
    expect(JSON.parse(res.body)).toEqual({ error: 'login required' })
    expect(res.closed).toBe(true)
    expect(app.rt.stats().refusals.app_response).toBe(1)
    expect(app.rt.stats().connections).toBe(0)
  })

  test('GET <path>/config answers the client config, not cached', async () => {
    const app = await start()
    const res = await request(app.base).get('/realtime/config').expect(200)
    expect(res.headers['cache-control']).toBe('no-store')
    expect(res.body).toEqual({ webSocketEnabled: true, url: '/realtime', protocol: 'cms-realtime.v1', heartbeatMs: 25000, fallback: { transport: 'sse', url: '/realtime/events' }, handshakeTopics: true, transports: [{ transport: 'websocket', url: '/realtime', heartbeatMs: 25000 }, { transport: 'sse', url: '/realtime/events', heartbeatMs: 25000 }, { transport: 'poll', url: '/realtime/poll', holdMs: 25000 }] })
  })

  test('a handshake stripped of its upgrade headers gets 426 naming the proxy, and is counted', async () => {
    const app = await start()
    const res = await request(app.base)
      .get('/realtime')
      .set('Sec-WebSocket-Key', 'dGhlIHNhbXBsZSBub25jZQ==')
      .set('Sec-WebSocket-Version', '13')
      .expect(426)
    expect(res.headers.upgrade).toBe('websocket')
    expect(res.body).toMatchObject({ error: 'upgrade_required', cause: 'stripped_upgrade' })
    expect(app.rt.stats().strippedUpgrades).toBe(1)
  })

  test('requests that are not ours go on to the next middleware', async () => {
    const app = await start()
    await request(app.base).get('/editor').expect(200, 'app page')
    await request(app.base).get('/realtimeish/config').expect(200, 'app page')
  })

  test('switching the flag off closes sockets with 4000, refuses upgrades with 503 and says so in config; on again accepts', async () => {
    const app = await start()
    const open = await connect(app.port, { headers: { 'x-user': 'anna' } })
    cleanup.add(() => open.close())
    app.rt.webSocketEnabled = false
    expect(await open.closed()).toBe(4000)
    await expect(connect(app.port, { headers: { 'x-user': 'anna' } })).rejects.toMatchObject({ status: 503 })
    expect((await request(app.base).get('/realtime/config')).body).toMatchObject({ webSocketEnabled: false, mode: 'manual-refresh' })
    app.rt.webSocketEnabled = true
    expect((await request(app.base).get('/realtime/config')).body).toMatchObject({ webSocketEnabled: true })
    const again = await connect(app.port, { headers: { 'x-user': 'anna' } })
    cleanup.add(() => again.close())
    expect(app.rt.stats().connections).toBe(1)
  })

  test('without attach(), the first request attaches the upgrade listener', async () => {
    const app = await start({ attach: false })
    expect(app.server.listenerCount('upgrade')).toBe(0)
    await request(app.base).get('/realtime/config').expect(200)
    expect(app.server.listenerCount('upgrade')).toBe(1)
    const client = await connect(app.port, { headers: { 'x-user': 'anna' } })
    cleanup.add(() => client.close())
    expect(await client.subscribe('projects')).toMatchObject({ op: 'subscribed' })
  })

  test('a failure while answering reaches the framework error handling instead of hanging or crashing', async () => {
    const app = await start()
    await request(app.base).get('/realtime/config').set('x-break', '1').expect(500)
    expect(app.errors).toHaveLength(1)
    expect(app.errors[0]).toMatchObject({ message: 'broken by a middleware' })
    // The server keeps serving.
    const client = await connect(app.port, { headers: { 'x-user': 'anna' } })
    cleanup.add(() => client.close())
  })
})
