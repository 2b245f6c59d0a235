/**
 * `npm run start:behind-proxy`: the demo CMS behind a proxy that strips
 * WebSocket upgrades (nginx with a plain proxy_pass), to see the fallback and
 * its diagnosis. PORT (default 3000) is the proxy, APP_PORT (3001) the app.
 * HOLD_STREAMS=1: the proxy also holds streamed responses (a compressing or
 * buffering proxy): the page steps down to long polling and says why.
 */
import { startBehindProxy } from './start'

const port = Number(process.env.PORT ?? 3000)
const appPort = Number(process.env.APP_PORT ?? 3001)
const host = process.env.HOST ?? '127.0.0.1'

async function main(): Promise<void> {
  const hold = process.env.HOLD_STREAMS === '1'
  const demo = await startBehindProxy({ port, appPort, host, hold })
  console.log(`demo CMS behind a proxy that strips WebSocket upgrades${hold ? ' and holds streamed responses' : ''}`)
  console.log(`  through the proxy:  http://localhost:${demo.proxy.port}/?user=anna   → badge "fallback · ${hold ? 'long polling' : 'SSE'}", a hint names the proxy`)
  console.log(`  straight to the app: http://localhost:${appPort}/?user=anna   → badge "live"`)
  console.log(`  what the server sees (rt.stats()) is printed here when it changes`)

  // The admin's view: editors on SSE, stripped upgrades, and the clients' reports.
  let last = ''
  const timer = setInterval(() => {
    const s = demo.rt.stats()
    const line = `stats: transports=${JSON.stringify(s.transports)} strippedUpgrades=${s.strippedUpgrades} diagnoses=${JSON.stringify(s.diagnoses)} stepDowns=${JSON.stringify(s.stepDowns)}`
    if (line !== last) console.log(`  ${line}`)
    last = line
  }, 1000)

  const stop = () => {
    clearInterval(timer)
    void demo.close().then(() => process.exit(0))
}
process.on('SIGINT', stop)
process.on('SIGTERM', stop)
}

main().catch((err: unknown) => {
  console.error(err)
  process.exit(1)
})
