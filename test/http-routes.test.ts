/** `<path>/config` and the answers to plain requests on the WebSocket path. */
import request from 'supertest'
import { fixture, type Fixture } from './helpers/fixture'

let f: Fixture
afterEach(async () => { await f.close() })

describe('GET <path>/config', () => {
  test('tells the UI to connect, where, and with which protocol; never cached', async () => {
    f = await fixture({ heartbeatMs: 5000 })
    const res = await request(f.srv.server).get('/realtime/config').expect(200)
    expect(res.headers['cache-control']).toBe('no-store')
    expect(res.body).toEqual({
      webSocketEnabled: true, url: '/realtime', protocol: 'cms-realtime.v1', heartbeatMs: 5000,
      fallback: { transport: 'sse', url: '/realtime/events' }, handshakeTopics: true,
      transports: [
        { transport: 'websocket', url: '/realtime', heartbeatMs: 5000 },
        { transport: 'sse', url: '/realtime/events', heartbeatMs: 5000 },
        { transport: 'poll', url: '/realtime/poll', holdMs: 25_000 },
      ],
    })
  })

  test('says manual-refresh when the channel is off', async () => {
    f = await fixture({ webSocketEnabled: false })
    const res = await request(f.srv.server).get('/realtime/config').expect(200)
    expect(res.body).toEqual({ webSocketEnabled: false, mode: 'manual-refresh', protocol: 'cms-realtime.v1', fallback: null, transports: [] })
  })

  test('with fallbackWhenDisabled the off channel still offers SSE; fallback "none" offers nothing', async () => {
    f = await fixture({ webSocketEnabled: false, fallbackWhenDisabled: true })
    expect((await request(f.srv.server).get('/realtime/config')).body)
      .toMatchObject({ webSocketEnabled: false, mode: 'fallback', fallback: { transport: 'sse', url: '/realtime/events' } })
    await f.close()
    f = await fixture({ fallback: 'none' })
    expect((await request(f.srv.server).get('/realtime/config')).body).toMatchObject({ webSocketEnabled: true, fallback: null, transports: [{ transport: 'websocket' }] })
  })

  test('the SSE endpoint of a switched-off channel answers 503, and open streams end', async () => {
    f = await fixture()
    const ac = new AbortController()
    const stream = await fetch(`${f.srv.base}/realtime/events?topics=projects`, { signal: ac.signal })
    expect(stream.status).toBe(200)
    expect(f.rt.stats().fallbackStreams).toBe(1)
    f.rt.webSocketEnabled = false
    const body = await stream.text() // resolves only when the server ends the stream
    expect(typeof body).toBe('string')
    expect(f.rt.stats().fallbackStreams).toBe(0)
    await request(f.srv.server).get('/realtime/events?topics=projects').expect(503)
  })

  test('url is the configured absolute path, mount prefix included', async () => {
    f = await fixture({ path: '/cms/realtime' })
    const res = await request(f.srv.server).get('/cms/realtime/config?x=1').expect(200)
    expect(res.body.url).toBe('/cms/realtime')
    await request(f.srv.server).get('/realtime/config').expect(200, 'app page') // not ours any more
  })

  test('HEAD answers like GET without a body; POST gets 405 with Allow', async () => {
    f = await fixture()
    const head = await request(f.srv.server).head('/realtime/config').expect(200)
    expect(head.text).toBeUndefined()
    const post = await request(f.srv.server).post('/realtime/config').expect(405)
    expect(post.headers.allow).toBe('GET, HEAD')
  })

  test('unknown sub-paths are 404 JSON; neighbours of the path are the app\'s', async () => {
    f = await fixture()
    const res = await request(f.srv.server).get('/realtime/nope').expect(404)
    expect(res.body.error).toBe('not_found')
    await request(f.srv.server).get('/realtimex').expect(200, 'app page')
  })
})

describe('plain GET on the WebSocket path', () => {
  test.each([
    ['nginx plain proxy_pass (HTTP/1.0, Connection: close, Sec-WebSocket-* kept)', { 'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==', 'Sec-WebSocket-Version': '13', Connection: 'close' }],
    ['a half-configured proxy (Upgrade kept, Connection dropped)', { Upgrade: 'websocket' }],
  ])('%s → 426 stripped_upgrade, counted', async (_t, headers) => {
    f = await fixture()
    const res = await request(f.srv.server).get('/realtime').set(headers).expect(426)
    expect(res.headers.upgrade).toBe('websocket')
    expect(res.body).toMatchObject({ error: 'upgrade_required', cause: 'stripped_upgrade', reason: expect.stringMatching(/proxy/) })
    expect(f.rt.stats()).toMatchObject({ strippedUpgrades: 1, refusals: { stripped_upgrade: 1 } })
  })

  test('a browser simply visiting the path gets 426 too, counted apart from proxies', async () => {
    f = await fixture()
    const res = await request(f.srv.server).get('/realtime').expect(426)
    expect(res.body).toMatchObject({ error: 'upgrade_required', cause: 'plain_request' })
    expect(f.rt.stats()).toMatchObject({ strippedUpgrades: 0, refusals: { plain_request: 1 } })
  })

  test('POST on the path gets 405', async () => {
    f = await fixture()
    await request(f.srv.server).post('/realtime').expect(405)
  })
})
