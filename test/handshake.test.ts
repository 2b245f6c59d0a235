/**
 * The README's handshake table, row by row: first the pure check, then the
 * same requests on a raw socket against a real server, reading the status
 * line and headers the server wrote and that it closed the connection.
 */
import { checkUpgrade, hasToken } from '../lib/handshake'
import { createRealtime, type Realtime } from '../lib/realtime'
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
