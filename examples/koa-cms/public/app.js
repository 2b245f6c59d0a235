// The demo page: plain DOM and the public browser client, served by the
// middleware itself. State lives in Maps keyed by id, so a write seen both in
// a fetch and in an event is shown once, whichever arrives first.
import { createClient, watchRevision } from '/realtime/client.js'

const $ = (id) => document.getElementById(id)
const params = new URLSearchParams(location.search)
const cookie = (name) => document.cookie.split('; ').find((c) => c.startsWith(`${name}=`))?.slice(name.length + 1)
// The page's GET set the cookie the realtime requests are authenticated by.
const user = params.get('user') ?? cookie('demo-user') ?? 'anna'
let projectId = Number(params.get('project') ?? 1)
let lostAccess = false

const projects = new Map() // id → { id, name, itemCount, commentCount }
let project = { id: projectId, name: '', items: new Map(), comments: new Map() }
const notes = new Map() // id → { id, text, from }
let unseen = 0

// ---- API (as the signed-in demo user) --------------------------------------

async function api(method, url, body) {
  const headers = { 'x-demo-user': user }
  if (body !== undefined) headers['content-type'] = 'application/json'
  const res = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) })
  if (!res.ok) throw new Error(`${res.status}: ${(await res.text()) || res.statusText}`)
  return res.json()
}

const total = (p) => p.itemCount + p.commentCount

function mergeProject(summary) {
  // An event may be newer than a fetch answered just after it; counts only grow.
  const old = projects.get(summary.id)
  if (old === undefined || total(summary) >= total(old)) projects.set(summary.id, summary)
}

async function loadProjects() {
  for (const p of await api('GET', '/api/projects')) mergeProject(p)
  renderProjects()
}

async function loadProject() {
  const id = projectId
  try {
    const p = await api('GET', `/api/projects/${id}`)
    if (id !== projectId) return
    project.name = p.name
    for (const i of p.items) project.items.set(i.id, i)
    for (const c of p.comments) project.comments.set(c.id, c)
    showError('')
  } catch (err) {
    showError(`Could not load project ${id}: ${err.message}`)
  }
  renderProject()
}

const refresh = () => Promise.all([loadProjects(), loadProject()])

// ---- realtime ----------------------------------------------------------------

const rt = createClient({ configUrl: '/realtime/config' })
window.rt = rt // for the console (and the demo's tests)

rt.on('state', renderState)
rt.on('transport', () => renderState())
rt.on('diagnosis', renderDiagnosis)
// Access to the open project was withdrawn (removed from its members): the
// client already dropped the subscription; say so and clear what we showed.
rt.on('error', (e) => {
  if (e.code !== 'forbidden' || e.topic !== `project:${projectId}`) return
  lostAccess = true
  project.items.clear()
  project.comments.clear()
  renderProject()
  showError(`You no longer have access to ${project.name || `project ${projectId}`}.`)
})
// History could not cover a gap (e.g. a long disconnect): fetch that data again.
rt.on('resync', (topic) => {
  if (topic === 'projects') void loadProjects()
  else if (topic === `project:${projectId}`) void loadProject()
})

rt.subscribe('projects', (e) => {
  if (e.type !== 'project-updated') return
  mergeProject(e.data)
  renderProjects(e.data.id)
})

rt.subscribe(`notifications:${user}`, (e) => {
  if (e.type !== 'notification' || notes.has(e.data.id)) return
  notes.set(e.data.id, e.data)
  if ($('bell-panel').hidden) unseen++
  renderBell()
})

function watchProject() {
  return rt.subscribe(`project:${projectId}`, (e) => {
    if (e.data.projectId !== projectId) return
    if (e.type === 'item-added' || e.type === 'item-updated') project.items.set(e.data.item.id, e.data.item)
    else if (e.type === 'comment-added') project.comments.set(e.data.comment.id, e.data.comment)
    else return
    renderProject(e.type === 'comment-added' ? e.data.comment.id : e.data.item.id)
  })
}
let unwatch = watchProject()

function selectProject(id) {
  if (id === projectId && !lostAccess) return
  closeEditor()
  unwatch()
  lostAccess = false
  projectId = id
  project = { id, name: projects.get(id)?.name ?? '', items: new Map(), comments: new Map() }
  params.set('project', String(id))
  history.replaceState(null, '', `?${params}`)
  unwatch = watchProject() // subscribe first, then fetch: nothing falls in between
  renderProjects()
  renderProject()
  void loadProject()
}

// ---- rendering ---------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const e = Object.assign(document.createElement(tag), props)
  e.append(...children)
  return e
}

function renderState(state = rt.state) {
  const badge = $('badge')
  badge.dataset.state = state
  // Which rung of the ladder carries the events: websocket, sse or poll.
  badge.dataset.transport = rt.transport ?? ''
  badge.textContent = state === 'fallback' ? `fallback · ${rt.transport === 'poll' ? 'long polling' : 'SSE'}` : state
  badge.title = {
    connecting: 'Connecting to the realtime channel…',
    live: 'Live over WebSocket',
    fallback: rt.transport === 'poll'
      ? 'Live over long polling (something on the way holds streamed responses); the transports above are retried in the background'
      : 'Live over Server-Sent Events; the WebSocket is retried in the background',
    'manual-refresh': 'The server pushes nothing: refresh to see changes',
    offline: 'Nothing gets through; retrying',
    'signed-out': 'Your session ended: sign in again',
  }[state] ?? state
  $('banner').hidden = state !== 'manual-refresh'
  $('signed-out').hidden = state !== 'signed-out'
  $('who').textContent = state === 'signed-out' ? 'Signed out:' : 'Signed in as'
  for (const form of document.forms) form.querySelector('fieldset, button').disabled = state === 'signed-out'
}

function renderDiagnosis(d) {
  const p = $('diagnosis')
  p.hidden = d === null || (d.cause === 'disabled' && d.stepDown === undefined)
  if (d === null) return
  const why = d.cause === 'stripped_upgrade'
    ? 'a proxy between you and the server dropped the WebSocket upgrade (nginx needs proxy_set_header Upgrade/Connection)'
    : d.cause
  const step = {
    buffering_proxy: 'the event stream was held on the way (a proxy compressing or buffering text/event-stream, e.g. nginx gzip_types; or an antivirus HTTPS scanner): using long polling',
    stream_failed: 'the event stream kept failing: using long polling',
    poll_failed: 'long polls do not complete either: refresh to see changes',
  }[d.stepDown?.cause]
  p.textContent = `WebSocket not in use: ${why}.${step === undefined ? '' : ` ${step[0].toUpperCase()}${step.slice(1)}.`}`
}

function renderProjects(flashId) {
  const list = $('projects')
  list.replaceChildren(...[...projects.values()].sort((a, b) => a.id - b.id).map((p) => {
    const a = el('a', { href: `?user=${encodeURIComponent(user)}&project=${p.id}` },
      el('span', { textContent: p.name }),
      el('span', { className: 'n', textContent: `${p.itemCount} ${p.itemCount === 1 ? 'item' : 'items'}` }))
    a.setAttribute('aria-current', String(p.id === projectId))
    a.addEventListener('click', (ev) => { ev.preventDefault(); selectProject(p.id) })
    const li = el('li', { className: p.id === flashId ? 'flash' : '' }, a)
    li.dataset.project = String(p.id)
    return li
  }))
}

function renderProject(flashId) {
  $('project-name').textContent = project.name || `Project ${project.id}`
  const rows = (map, render, empty) => map.size === 0
    ? [el('li', { className: 'empty', textContent: empty })]
    : [...map.values()].sort((a, b) => a.id - b.id).map((x) => el('li', { className: x.id === flashId ? 'flash' : '' }, ...render(x)))
  $('items').replaceChildren(...rows(project.items, (i) => [i.title], 'No items yet.'))
  // Each item opens the editor (presence, lock, stale warning).
  const items = [...project.items.values()].sort((a, b) => a.id - b.id)
  items.forEach((item, n) => {
    const li = $('items').children[n]
    li.classList.add('item')
    li.dataset.item = String(item.id)
    li.title = 'Open the editor'
    li.addEventListener('click', () => openEditor(item.id))
  })
  $('comments').replaceChildren(...rows(project.comments, (c) => [el('span', { className: 'by', textContent: c.by }), ' ', c.text], 'No comments yet.'))
}

function renderBell() {
  const count = $('bell-count')
  count.hidden = unseen === 0
  count.textContent = String(unseen)
  const list = [...notes.values()].reverse()
  $('bell-list').replaceChildren(...(list.length === 0
    ? [el('li', { className: 'empty', textContent: 'Nothing yet.' })]
    : list.map((n) => el('li', {}, el('span', { className: 'by', textContent: `${n.from}:` }), ' ', n.text))))
}

function showError(text) {
  $('error').hidden = text === ''
  $('error').textContent = text
}

// ---- the item editor: who is viewing, the soft lock, the stale-edit warning ----
// Presence and the lock live on the item's own topic (`project:1/item:7`),
// which the server authorises like its project. Each tab is its own member:
// a second tab of yours shows as "you", never as someone else.

let editing = null // { id, topic, presence, lock, watch, revision, note }

function openEditor(id) {
  closeEditor()
  const item = project.items.get(id)
  if (item === undefined) return
  const topic = `project:${projectId}/item:${id}`
  const e = { id, topic, presence: rt.presence(topic, { editing: false }), lock: null, revision: item.revision, note: '' }
  e.presence.on('change', () => editing === e && renderEditor())
  // "Changed by ben since you opened it": events carry the item's revision.
  e.watch = watchRevision(rt, `project:${projectId}`, { revision: item.revision, self: user, match: (d) => d.item?.id === id }, (c) => {
    if (editing === e) showStale(c.by)
  })
  editing = e
  fillEditor(item)
  $('stale-banner').hidden = true
  $('editor').hidden = false
  renderEditor()
  void takeLock(false)
}

function closeEditor() {
  const e = editing
  if (e === null) return
  editing = null
  e.lock?.release()
  e.presence.leave()
  e.watch.stop()
  $('editor').hidden = true
}

async function takeLock(takeover) {
  const e = editing
  let got = null
  try {
    got = await rt.lock(e.topic, { takeover })
  } catch {
    // no connection yet (connecting, offline): the fields stay read-only; the save path still checks the revision
  }
  if (editing !== e) return got?.held && got.release()
  e.lock = got?.held ? got : null
  if (e.lock !== null) {
    e.note = ''
    e.presence.update({ editing: true })
    e.lock.on('lost', ({ by }) => {
      e.lock = null
      e.presence.update({ editing: false })
      // `by` null: the server took it (your access to the item was withdrawn, or an admin released it).
      e.note = by === null
        ? 'You can no longer edit this item (your access changed): your changes are not saved.'
        : `${by.user === user ? 'You, in another tab,' : by.user} took over editing: your changes are not saved.`
      renderEditor()
    })
  }
  renderEditor()
}

function renderEditor() {
  const e = editing
  if (e === null) return
  const p = e.presence
  // One avatar per user; your own other tabs are marked as you.
  const byUser = new Map()
  for (const m of p.members) {
    if (m.tab === p.tab) continue
    const v = byUser.get(m.user) ?? { tabs: 0, editing: false }
    v.tabs++
    v.editing ||= p.lock?.tab === m.tab
    byUser.set(m.user, v)
  }
  $('viewers').replaceChildren(...[...byUser].map(([u, v]) => {
    const li = el('li', { textContent: u.slice(0, 2), title: `${u === user ? 'You, in another tab' : u}${v.tabs > 1 ? ` (${v.tabs} tabs)` : ''}${v.editing ? ': editing' : ''}` })
    if (u === user) li.classList.add('you')
    if (v.editing) li.classList.add('editing')
    li.dataset.user = u
    return li
  }))
  const mine = e.lock !== null
  $('edit-fields').disabled = !mine
  const holder = p.lock
  const banner = $('lock-banner')
  banner.hidden = mine
  if (!mine) {
    const who = holder === null ? null : holder.tab === p.tab ? null : holder.user === user ? 'You, in another tab,' : holder.user
    $('lock-text').textContent = e.note || (who === null ? 'Nobody is editing this item.' : `${who} ${who.startsWith('You') ? 'are' : 'is'} editing: read-only here.`)
    $('take-over').textContent = holder === null || holder.tab === p.tab ? 'Edit' : 'Take over'
  }
}

function fillEditor(item) {
  const f = $('edit-form').elements
  f.title.value = item.title
  f.body.value = item.body ?? ''
}

function showStale(by) {
  $('stale-text').textContent = `Changed by ${by === user ? 'you, in another tab' : by ?? 'someone else'} since you opened it.`
  $('stale-banner').hidden = false
}

$('editor-close').addEventListener('click', () => closeEditor())
$('take-over').addEventListener('click', () => void takeLock(editing?.presence.lock !== null && editing?.presence.lock.tab !== editing?.presence.tab))
$('stale-reload').addEventListener('click', () => {
  const e = editing
  const item = e && project.items.get(e.id)
  if (!item) return
  e.revision = item.revision
  e.watch.saved(item.revision)
  fillEditor(item)
  $('stale-banner').hidden = true
})
$('edit-form').addEventListener('submit', async (ev) => {
  ev.preventDefault()
  const e = editing
  const data = Object.fromEntries(new FormData($('edit-form')))
  const res = await fetch(`/api/projects/${projectId}/items/${e.id}`, {
    method: 'PUT',
    headers: { 'x-demo-user': user, 'content-type': 'application/json' },
    body: JSON.stringify({ ...data, revision: e.revision }),
  })
  const body = await res.json()
  if (res.status === 409) return showStale(body.updatedBy) // the save path's own check
  if (!res.ok) return showError(body.error ?? res.statusText)
  e.revision = body.revision
  e.watch.saved(body.revision)
  project.items.set(body.id, body)
  renderProject(body.id)
})

// ---- forms -------------------------------------------------------------------

function onSubmit(id, send) {
  const form = $(id)
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault()
    const data = Object.fromEntries(new FormData(form))
    try {
      await send(data)
      form.reset()
      showError('')
      // Without a push channel the author still sees their own write at once.
      if (rt.state !== 'live' && rt.state !== 'fallback') await refresh()
    } catch (err) {
      showError(err.message)
    }
  })
}

onSubmit('item-form', async ({ title }) => {
  const item = await api('POST', `/api/projects/${projectId}/items`, { title })
  project.items.set(item.id, item)
  renderProject(item.id)
})
onSubmit('comment-form', async ({ text }) => {
  const comment = await api('POST', `/api/projects/${projectId}/comments`, { text })
  project.comments.set(comment.id, comment)
  renderProject(comment.id)
})
onSubmit('note-form', async ({ to, text }) => {
  await api('POST', `/api/notifications/${encodeURIComponent(to)}`, { text })
})

$('bell-button').addEventListener('click', () => {
  const panel = $('bell-panel')
  panel.hidden = !panel.hidden
  $('bell-button').setAttribute('aria-expanded', String(!panel.hidden))
  unseen = 0
  renderBell()
})
$('refresh').addEventListener('click', () => void refresh())
$('sign-out').addEventListener('click', () => void api('POST', '/api/logout').catch((err) => showError(err.message)))
$('sign-in').addEventListener('click', async () => {
  try {
    await api('POST', '/api/login', { user })
    rt.reconnect()
    await refresh()
  } catch (err) {
    showError(err.message)
  }
})

$('user').textContent = user
$('note-form').elements.to.value = user === 'anna' ? 'ben' : 'anna'
renderState()
renderBell()
void refresh()
