/**
 * The README's handshake table, row by row: first the pure check, then the
 * same requests on a raw socket against a real server, reading the status
 * line and headers the server wrote and that it closed the connection.
 */
import { checkUpgrade, hasToken } from '../lib/server/handshake'
import { createRealtime, type Realtime } from '../lib/server/realtime'
import { handshake, listen, rawRequest, type Listening } from './helpers/net'

const KEY = 'dGhlIHNhbXBsZSBub25jZQ=='
const valid = { host: 'cms.test', connection: 'keep-alive, Upgrade', upgrade: 'WebSocket', 'sec-websocket-version': '13', 'sec-websocket-key': KEY }

describe('checkUpgrade (pure)', () => {
  test.each([
    ['a valid request (Connection as a list, Upgrade in any case)', 'GET', {}, null],
    ['a non-GET method', 'POST', {}, [400, 'bad_method']],
    ['a missing Upgrade', 'GET', { upgrade: undefined }, [400, 'bad_upgrade']],
    ['Upgrade other than websocket', 'GET', { upgrade: 'h2c' }, [400, 'bad_upgrade']],
    ['Connection without the upgrade token', 'GET', { connection: 'keep-alive' }, [400, 'bad_connection']],
    ['Connection with upgrade only as part of a word', 'GET', { connection: 'upgraded' }, [400, 'bad_connection']],
    ['a missing Host', 'GET', { host: undefined }, [400, 'missing_host']],
    ['version 8', 'GET', { 'sec-websocket-version': '8' }, [426, 'bad_version']],
    ['a missing version', 'GET', { 'sec-websocket-version': undefined }, [426, 'bad_version']],
    ['a missing key', 'GET', { 'sec-websocket-key': undefined }, [400, 'bad_key']],
    ['a key that is not 16 bytes of base64', 'GET', { 'sec-websocket-key': 'short' }, [400, 'bad_key']],
    ['an offered subprotocol list without ours', 'GET', { 'sec-websocket-protocol': 'chat, mqtt' }, [400, 'bad_subprotocol']],
    ['an offered list that includes ours', 'GET', { 'sec-websocket-protocol': 'chat, cms-realtime.v1' }, null],
    ['an offered list with an empty element', 'GET', { 'sec-websocket-protocol': 'cms-realtime.v1,,' }, [400, 'bad_subprotocol']],
    ['an offered list naming ours twice (a repeated header)', 'GET', { 'sec-websocket-protocol': 'cms-realtime.v1, cms-realtime.v1' }, [400, 'bad_subprotocol']],
    ['HTTP/1.0', 'GET', { httpVersion: '1.0' }, [400, 'bad_http_version']],
    ['two Host headers', 'GET', { rawHeaders: 'Host,a,host,b' }, [400, 'bad_host']],
    ['a Content-Length (a body, as smuggling looks)', 'GET', { 'content-length': '0' }, [400, 'request_body']],
    ['a Transfer-Encoding', 'GET', { 'transfer-encoding': 'chunked' }, [400, 'request_body']],
  ] as const)('%s', (_title, method, overrides, expected) => {
    const { httpVersion = '1.1', rawHeaders = 'Host,cms.test', ...rest } = overrides as Record<string, string | undefined>
    const headers: Record<string, string | undefined> = { ...valid, ...rest }
    const r = checkUpgrade({ method, headers, httpVersion, rawHeaders: rawHeaders.split(',') }, true)
    if (expected === null) expect(r).toBeNull()
    else expect([r?.status, r?.reason]).toEqual(expected)
  })

  test('426 names the version we speak', () => {
    expect(checkUpgrade({ method: 'GET', headers: { ...valid, 'sec-websocket-version': '12' } }, true)?.headers)
      .toEqual({ 'Sec-WebSocket-Version': '13' })
  })

  test('a disabled channel refuses with 503 before anything else', () => {
    expect(checkUpgrade({ method: 'POST', headers: {} }, false)).toMatchObject({ status: 503, reason: 'disabled' })
  })

  test('hasToken reads comma lists and repeated headers', () => {
    expect(hasToken('keep-alive,  UPGRADE ', 'upgrade')).toBe(true)
    expect(hasToken(['keep-alive', 'Upgrade'], 'upgrade')).toBe(true)
    expect(hasToken('keep-alive', 'upgrade')).toBe(false)
    expect(hasToken(undefined, 'upgrade')).toBe(false)
  })
})

describe('handshake answers on the wire', () => {
  let rt: Realtime
  let srv: Listening
  beforeEach(async () => {
    rt = createRealtime({ allowedOrigins: ['https://cms.example.com'] })
    srv = await listen((req, res) => { if (!rt.handleRequest(req, res)) res.writeHead(200).end('app page') })
    rt.attach(srv.server)
  })
  afterEach(async () => {
    await rt.close()
    await srv.close()
  })

  test.each([
    ['a valid handshake', 101, undefined, {}, 'GET'],
    ['a non-GET method', 400, 'bad_method', {}, 'POST'],
    ['Upgrade other than websocket', 400, 'bad_upgrade', { Upgrade: 'h2c' }, 'GET'],
    ['a missing Host', 400, 'missing_host', { Host: undefined }, 'GET'],
    ['version 8', 426, 'bad_version', { 'Sec-WebSocket-Version': '8' }, 'GET'],
    ['a bad key', 400, 'bad_key', { 'Sec-WebSocket-Key': 'abc' }, 'GET'],
    ['a foreign Origin', 403, 'origin', { Origin: 'https://evil.example' }, 'GET'],
    ['an allowed Origin', 101, undefined, { Origin: 'https://cms.example.com' }, 'GET'],
    ['a same-origin Origin', 101, undefined, { Origin: 'http://HOST' }, 'GET'],
    ['a subprotocol list without ours', 400, 'bad_subprotocol', { 'Sec-WebSocket-Protocol': 'chat' }, 'GET'],
    ['a Content-Length', 400, 'request_body', { 'Content-Length': '5' }, 'GET'],
    ['a Transfer-Encoding', 400, 'request_body', { 'Transfer-Encoding': 'chunked' }, 'GET'],
  ] as const)('%s → %i %s', async (_t, status, error, extra, method) => {
    const fixed = Object.fromEntries(Object.entries(extra).map(([k, v]) => [k, v?.replace('HOST', `127.0.0.1:${srv.port}`)]))
    const res = await rawRequest(srv.port, handshake(srv.port, '/realtime', fixed, method), 1000)
    expect(res.status).toBe(status)
    if (status === 101) {
      expect(res.headers['sec-websocket-accept']).toBe('s3pPLMBiTxaQ9kYGzzhZRbK+xOo=')
      return
    }
    expect(res.closed).toBe(true)
    expect(res.headers.connection).toBe('close')
    expect(JSON.parse(res.body)).toMatchObject({ error })
    expect(rt.stats().refusals[error!]).toBe(1)
    if (status === 426) expect(res.headers['sec-websocket-version']).toBe('13')
  })

  test('Content-Length and Transfer-Encoding together (CL.TE) never reach the upgrade: Node\'s parser answers 400 and closes', async () => {
    const res = await rawRequest(srv.port, handshake(srv.port, '/realtime', { 'Content-Length': '4', 'Transfer-Encoding': 'chunked' }), 1000)
    expect(res.status).toBe(400)
    expect(res.closed).toBe(true)
  })

  test('a disabled channel answers 503 with a JSON reason', async () => {
    rt.webSocketEnabled = false
    const res = await rawRequest(srv.port, handshake(srv.port))
    expect(res.status).toBe(503)
    expect(JSON.parse(res.body)).toMatchObject({ error: 'disabled' })
  })

  test('an upgrade for another path with no other listener gets 404, not a hang', async () => {
    const res = await rawRequest(srv.port, handshake(srv.port, '/somewhere-else'), 2000)
    expect(res.status).toBe(404)
    expect(res.closed).toBe(true)
  })

  test('Upgrade: websocket without Connection: upgrade is not an upgrade to Node: it gets 426, naming the proxy', async () => {
    const res = await rawRequest(srv.port, handshake(srv.port, '/realtime', { Connection: 'close' }))
    expect(res.status).toBe(426)
    expect(res.headers.upgrade).toBe('websocket')
    expect(JSON.parse(res.body)).toMatchObject({ error: 'upgrade_required', cause: 'stripped_upgrade' })
    expect(JSON.parse(res.body).reason).toMatch(/proxy/)
    expect(rt.stats().strippedUpgrades).toBe(1)
  })
})

describe('allowedHosts: DNS rebinding', () => {
  let rt: Realtime
  let srv: Listening
  afterEach(async () => {
    await rt.close()
    await srv.close()
  })
  async function start(allowedHosts?: string[]): Promise<void> {
    rt = createRealtime(allowedHosts === undefined ? {} : { allowedHosts })
    srv = await listen((req, res) => { if (!rt.handleRequest(req, res)) res.writeHead(200).end('app page') })
    rt.attach(srv.server)
  }
  /** Host and Origin both the attacker's name: what a rebound page sends, same-origin with itself. */
  const rebound = (port: number, host: string) => handshake(port, '/realtime', { Host: host, Origin: `http://${host}` })

  test('without allowedHosts a rebinding-shaped handshake is same-origin and accepted (why the option exists)', async () => {
    await start()
    expect((await rawRequest(srv.port, rebound(srv.port, 'attacker.test'), 1000)).status).toBe(101)
  })

  test.each([
    ['the attacker\'s name', 'attacker.test', 403],
    ['a listed name', 'cms.example.com', 101],
    ['a listed name with a port, in capitals', 'CMS.example.com:8443', 101],
    ['a subdomain of a listed domain', 'eu.example.org', 101],
    ['the listed domain itself', 'example.org', 101],
    ['a name that only ends like the domain', 'badexample.org', 403],
    ['an IP address', '127.0.0.1:3000', 101],
    ['an IPv6 address', '[::1]:3000', 101],
    ['localhost', 'localhost:3000', 101],
  ])('Host %s (%s) → %i', async (_t, host, status) => {
    await start(['cms.example.com', '.example.org'])
    const res = await rawRequest(srv.port, rebound(srv.port, host), 1000)
    expect(res.status).toBe(status)
    if (status === 403) {
      expect(JSON.parse(res.body)).toMatchObject({ error: 'host_not_allowed' })
      expect(rt.stats().refusals.host_not_allowed).toBe(1)
    }
  })

  test('every route under the path refuses an unlisted host: config, the event stream, tickets, diagnostics', async () => {
    await start(['cms.example.com'])
    for (const path of ['/realtime/config', '/realtime/events?topics=projects', '/realtime/diagnostics?nonce=aaaaaaaaaaaaaaaaaaaa']) {
      const res = await rawRequest(srv.port, `GET ${path} HTTP/1.1\nHost: attacker.test\nOrigin: http://attacker.test`, 1000)
      expect([path, res.status]).toEqual([path, 403])
    }
    const ticket = await rawRequest(srv.port, 'POST /realtime/ticket HTTP/1.1\nHost: attacker.test\nAuthorization: Bearer x\nContent-Length: 0', 1000)
    expect(ticket.status).toBe(403)
    // The app's own routes are the app's business.
    expect((await rawRequest(srv.port, 'GET / HTTP/1.1\nHost: attacker.test', 1000)).status).toBe(200)
    expect((await rawRequest(srv.port, 'GET /realtime/config HTTP/1.1\nHost: cms.example.com', 1000)).status).toBe(200)
  })

  test('a malformed allowedHosts throws a TypeError naming the option', () => {
    expect(() => createRealtime({ allowedHosts: 'cms.example.com' as never })).toThrow(/allowedHosts/)
    expect(() => createRealtime({ allowedHosts: [''] })).toThrow(/allowedHosts/)
  })
})
