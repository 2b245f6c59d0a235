/** `npm start`: the demo CMS on PORT (default 3000). */
import { createApp } from './app'

const port = Number(process.env.PORT ?? 3000)
const { app, rt } = createApp()
const server = app.listen(port, () => {
  console.log(`demo CMS on http://localhost:${port}  (WebSocket channel ${rt.webSocketEnabled ? 'on' : 'off'})`)
  console.log(`  open:    http://localhost:${port}/?user=anna  (and ?user=ben in a private window)`)
  console.log(`  config:  curl http://localhost:${port}/realtime/config`)
  console.log(`  publish: curl -X POST -H 'content-type: application/json' -d '{"title":"Hero"}' http://localhost:${port}/api/projects/1/items`)
})
rt.attach(server)

const stop = () => {
  void rt.close().then(() => server.close(() => process.exit(0)))
}
process.on('SIGINT', stop)
process.on('SIGTERM', stop)
