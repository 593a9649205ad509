// The MD5 service page: uploads with progress, live status pushed by the task's event stream
// (Server-Sent Events, with hashing progress; long-polls with ?wait= where a stream cannot be
// had, e.g. behind an API key, which EventSource cannot send), lookup by id,
// and this browser's recent tasks (localStorage). Uses only the v1 API. Files from 8 MiB on go
// through tus-js-client (vendored, /assets/tus.min.js) to /api/v1/uploads in 4 MiB chunks: an
// interrupted one (a lost connection, a reload) can be continued from where the service got to.
'use strict';

const STORE_KEY = 'md5.recentTasks';
const MAX_RECENT = 50;
// Seconds one long-poll asks for; lowered to the service's longest wait if it says it is shorter.
let waitSeconds = 30;
// Statuses of a task still on its way; any other is final.
const PENDING = new Set(['queued', 'processing', 'uploading']);
// Files this large (and larger) are uploaded resumably.
const RESUMABLE_BYTES = 8 * 1024 * 1024;
const CHUNK_BYTES = 4 * 1024 * 1024;
const $ = (id) => document.getElementById(id);
let apiKey = sessionStorage.getItem('md5.apiKey') || '';

function authHeaders() {
  return apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
}

function askForKey() {
  const key = window.prompt('This service needs an API key. Enter it (kept for this session only):');
  if (key) {
    apiKey = key.trim();
    sessionStorage.setItem('md5.apiKey', apiKey);
    return true;
  }
  return false;
}

function recent() {
  try { return JSON.parse(localStorage.getItem(STORE_KEY)) || []; } catch { return []; }
}

function remember(task) {
  const list = recent().filter((t) => t.id !== task.id);
  list.unshift({ id: task.id, file_name: task.file_name });
  localStorage.setItem(STORE_KEY, JSON.stringify(list.slice(0, MAX_RECENT)));
}

function formatBytes(n) {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return i === 0 ? `${n} bytes` : `${n.toFixed(1)} ${units[i]}`;
}

function problemText(status, body) {
  if (status === 413) return `The file is too large. ${body && body.detail ? body.detail : ''}`.trim();
  if (status === 503) return 'The service is unavailable right now. Please try again in a few seconds.';
  if (status === 507) return 'The server has no room for this file right now.';
  if (status === 401) return 'The API key is missing or wrong.';
  if (status === 404) return 'Not found: no task has this id.';
  return (body && body.detail) || `The request failed (HTTP ${status}).`;
}

// Each algorithm's label, by name, from the service's registry (`/assets/algorithms.json`).
const DIGEST_LABELS = {};

// One checkbox per algorithm the service computes besides MD5, as its registry lists them.
async function offerAlgorithms() {
  const response = await fetch('/assets/algorithms.json');
  if (!response.ok) return;
  const fieldset = $('digest-choice');
  for (const { name, label } of await response.json()) {
    DIGEST_LABELS[name] = label;
    if (name === 'md5') continue;
    const box = document.createElement('input');
    box.type = 'checkbox';
    box.name = 'digest';
    box.value = name;
    const wrapper = document.createElement('label');
    wrapper.append(box, ` ${label}`);
    fieldset.append(wrapper);
  }
}
offerAlgorithms().catch(() => {});

// The `?digests=` of the algorithms ticked on the form ('' when none: the server's default).
function digestsQuery() {
  const chosen = [...document.querySelectorAll('#digest-choice input:checked')].map((box) => box.value);
  return chosen.length ? `?digests=${chosen.join(',')}` : '';
}

function copyButton(label, text) {
  const button = document.createElement('button');
  button.type = 'button';
  button.textContent = label;
  button.addEventListener('click', async () => {
    try { await navigator.clipboard.writeText(text); button.textContent = 'Copied'; } catch { button.textContent = 'Copy failed'; }
    setTimeout(() => { button.textContent = label; }, 1500);
  });
  return button;
}

function card(title) {
  const li = document.createElement('li');
  li.className = 'task';
  const name = document.createElement('div');
  name.className = 'name';
  name.textContent = title;
  const body = document.createElement('div');
  li.append(name, body);
  $('tasks').prepend(li);
  return { li, body };
}

function render(view, task) {
  view.li.dataset.taskId = task.id;
  view.body.replaceChildren();
  const idRow = document.createElement('div');
  idRow.className = 'row';
  const idCode = document.createElement('code');
  idCode.textContent = task.id;
  idRow.append('Promise id: ', idCode, copyButton('Copy id', task.id));
  const status = document.createElement('div');
  status.className = `status status-${task.status}`;
  status.textContent = `Status: ${task.status}`;
  view.body.append(idRow, status);
  if (task.status === 'processing' && task.progress) {
    const { bytes_hashed: hashed, size_bytes: size } = task.progress;
    const bar = document.createElement('progress');
    bar.className = 'hashing';
    bar.max = size || 1;
    bar.value = hashed;
    bar.setAttribute('aria-label', `Hashing progress of ${task.file_name}`);
    const label = document.createElement('div');
    label.className = 'hint hashing-label';
    label.textContent = `Hashing: ${formatBytes(hashed)} of ${formatBytes(size)}`;
    view.body.append(bar, label);
  }
  if (task.status === 'done') {
    const md5Row = document.createElement('div');
    md5Row.className = 'row';
    const md5 = document.createElement('code');
    md5.className = 'md5';
    md5.textContent = task.md5;
    md5Row.append('MD5: ', md5, copyButton('Copy MD5', task.md5));
    view.body.append(md5Row);
    // Every other digest the task computed, in the order the service lists them.
    for (const [algorithm, hex] of Object.entries(task.digests || {})) {
      if (algorithm === 'md5') continue;
      const label = DIGEST_LABELS[algorithm] || algorithm;
      const row = document.createElement('div');
      row.className = 'row';
      const code = document.createElement('code');
      code.className = 'digest';
      code.dataset.algorithm = algorithm;
      code.textContent = hex;
      row.append(`${label}: `, code, copyButton(`Copy ${label}`, hex));
      view.body.append(row);
    }
  }
  if (task.error) {
    const error = document.createElement('div');
    error.className = 'error';
    error.textContent = `Error: ${task.error}`;
    view.body.append(error);
  }
  const meta = document.createElement('div');
  meta.className = 'hint';
  const took = task.finished_at ? ` · done in ${((new Date(task.finished_at) - new Date(task.created_at)) / 1000).toFixed(2)} s` : '';
  meta.textContent = `${formatBytes(task.size_bytes)} · uploaded ${new Date(task.created_at).toLocaleString()}${took}`;
  view.body.append(meta);
}

function showError(view, text) {
  view.body.replaceChildren();
  const error = document.createElement('div');
  error.className = 'error';
  error.setAttribute('role', 'alert');
  error.textContent = text;
  view.body.append(error);
}

async function fetchTask(id, wait) {
  const url = `/api/v1/hashes/${encodeURIComponent(id)}${wait ? `?wait=${wait}` : ''}`;
  const response = await fetch(url, { headers: authHeaders() });
  const body = await response.json().catch(() => null);
  return { status: response.status, body };
}

// Follows a task through its event stream (`GET /api/v1/hashes/{id}/events`): each status and
// progress event is rendered as it comes. Resolves with the final task, or null when no stream
// can be had (an HTTP error, or three breaks in a row): the caller then long-polls.
function followEvents(view, id) {
  return new Promise((resolve) => {
    let source;
    try {
      source = new EventSource(`/api/v1/hashes/${encodeURIComponent(id)}/events`);
    } catch {
      resolve(null);
      return;
    }
    let last = null;
    let breaks = 0;
    source.addEventListener('status', (event) => {
      breaks = 0;
      last = JSON.parse(event.data);
      render(view, last);
      if (!PENDING.has(last.status)) {
        source.close();
        resolve(last);
      }
    });
    source.addEventListener('progress', (event) => {
      breaks = 0;
      const progress = JSON.parse(event.data);
      if (last && last.status === 'processing') {
        last = { ...last, progress: { bytes_hashed: progress.bytes_hashed, size_bytes: progress.size_bytes } };
        render(view, last);
      }
    });
    source.addEventListener('error', () => {
      breaks += 1;
      // CLOSED: the service answered with an error status; the browser will not retry.
      if (source.readyState === EventSource.CLOSED || breaks >= 3) {
        source.close();
        resolve(null);
      }
    });
  });
}

// Follows a task until it is finished: through its event stream where the browser can open one
// (no API key to send), else by long-polling.
async function follow(view, id, firstWait = waitSeconds) {
  if (window.EventSource && !apiKey) {
    const task = await followEvents(view, id);
    if (task) return task;
  }
  return poll(view, id, firstWait);
}

// Follows a task until it is finished, one long-poll at a time (never a tight loop: a server
// that answers "not yet" sooner than asked is asked again after a growing pause). `firstWait`
// 0 shows the task at once (a card that has nothing to show yet).
async function poll(view, id, firstWait = waitSeconds) {
  let failures = 0;
  let pause = 250;
  let wait = firstWait;
  for (;;) {
    let result;
    const asked = Date.now();
    try {
      result = await fetchTask(id, wait);
    } catch {
      result = { status: 0, body: null };
    }
    if (result.status === 200) {
      failures = 0;
      render(view, result.body);
      if (!PENDING.has(result.body.status)) return result.body;
      if (wait === 0) {
        wait = waitSeconds;
        continue;
      }
      if (Date.now() - asked < Math.max(wait, 1) * 1000) {
        await new Promise((resolve) => setTimeout(resolve, pause));
        pause = Math.min(5000, pause * 2);
      } else {
        pause = 250;
      }
      continue;
    }
    // The service's longest wait is shorter than ours: it says so in the problem.
    const maxWait = result.body && Number.isInteger(result.body.max_wait_seconds) ? result.body.max_wait_seconds : null;
    if (result.status === 400 && maxWait !== null && maxWait < wait) {
      waitSeconds = maxWait;
      wait = maxWait;
      continue;
    }
    if (result.status === 401 && askForKey()) continue;
    if (result.status === 404 || result.status === 401) {
      showError(view, problemText(result.status, result.body));
      return null;
    }
    failures += 1;
    showError(view, `${problemText(result.status || 503, result.body)} Retrying…`);
    await new Promise((resolve) => setTimeout(resolve, Math.min(30000, 1000 * 2 ** failures)));
  }
}

// A card for a file being uploaded: its progress bar, a label and a Cancel button.
function uploadCard(file) {
  const view = card(file.name);
  const progress = document.createElement('progress');
  progress.max = file.size || 1;
  progress.value = 0;
  progress.setAttribute('aria-label', `Upload progress of ${file.name}`);
  const label = document.createElement('span');
  const cancel = document.createElement('button');
  cancel.type = 'button';
  cancel.textContent = 'Cancel';
  const row = document.createElement('div');
  row.className = 'row';
  row.append(label, cancel);
  view.body.append(progress, row);
  return { view, progress, label, cancel };
}

function upload(file) {
  if (file.size >= RESUMABLE_BYTES && window.tus && window.tus.isSupported) {
    uploadResumable(file);
    return;
  }
  const { view, progress, label, cancel } = uploadCard(file);

  const xhr = new XMLHttpRequest();
  xhr.open('POST', `/api/v1/hashes${digestsQuery()}`);
  for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
  xhr.upload.addEventListener('progress', (event) => {
    if (event.lengthComputable) {
      progress.max = event.total;
      progress.value = event.loaded;
      label.textContent = `Uploading: ${formatBytes(event.loaded)} of ${formatBytes(event.total)}`;
    }
  });
  cancel.addEventListener('click', () => xhr.abort());
  xhr.addEventListener('abort', () => showError(view, 'Upload cancelled.'));
  xhr.addEventListener('error', () => showError(view, 'The upload failed: the server could not be reached.'));
  xhr.addEventListener('load', () => {
    let body = null;
    try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
    if (xhr.status === 202 && body) {
      remember(body);
      render(view, body);
      follow(view, body.id);
    } else if (xhr.status === 401 && askForKey()) {
      view.li.remove();
      upload(file);
    } else {
      showError(view, problemText(xhr.status, body));
    }
  });
  const form = new FormData();
  form.append('file', file, file.name);
  xhr.send(form);
}

// The answer a tus-js-client error carries: its status and problem, if the service answered.
function tusFailure(error) {
  const response = error && error.originalResponse;
  if (!response) return { status: 0, body: null };
  let body = null;
  try { body = JSON.parse(response.getBody()); } catch { /* not JSON */ }
  return { status: response.getStatus(), body };
}

// Asks whether to continue an interrupted upload of this file; resolves true to continue.
function offerToContinue(view, previous) {
  return new Promise((resolve) => {
    const row = document.createElement('div');
    row.className = 'row resume-offer';
    const text = document.createElement('span');
    const started = previous.creationTime ? ` (started ${new Date(previous.creationTime).toLocaleString()})` : '';
    text.textContent = `An earlier upload of this file was interrupted${started}.`;
    const resume = document.createElement('button');
    resume.type = 'button';
    resume.textContent = 'Continue it';
    const fresh = document.createElement('button');
    fresh.type = 'button';
    fresh.textContent = 'Start over';
    resume.addEventListener('click', () => { row.remove(); resolve(true); });
    fresh.addEventListener('click', () => { row.remove(); resolve(false); });
    row.append(text, resume, fresh);
    view.body.prepend(row);
    resume.focus();
  });
}

async function uploadResumable(file) {
  const { view, progress, label, cancel } = uploadCard(file);
  let resumedFrom = 0;
  let first = true;
  const upload = new window.tus.Upload(file, {
    endpoint: `/api/v1/uploads${digestsQuery()}`,
    chunkSize: CHUNK_BYTES,
    retryDelays: [0, 1000, 3000, 5000, 10000],
    metadata: { filename: file.name, filetype: file.type || 'application/octet-stream' },
    headers: authHeaders(),
    removeFingerprintOnSuccess: true,
    onUploadUrlAvailable: () => {
      const id = upload.url.split('/').pop();
      view.li.dataset.taskId = id;
      remember({ id, file_name: file.name });
    },
    onProgress: (sent, total) => {
      if (first) { resumedFrom = sent; first = false; }
      progress.max = total;
      progress.value = sent;
      const from = resumedFrom > 0 ? ` (continued from ${formatBytes(resumedFrom)})` : '';
      label.textContent = `Uploading: ${formatBytes(sent)} of ${formatBytes(total)}${from}`;
    },
    onError: (error) => {
      const { status, body } = tusFailure(error);
      if (status === 401 && askForKey()) {
        view.li.remove();
        uploadResumable(file);
        return;
      }
      showError(view, status ? problemText(status, body)
        : 'The upload was interrupted: the server could not be reached. Choose the file again to continue it.');
    },
    onSuccess: async () => {
      const id = upload.url.split('/').pop();
      const result = await fetchTask(id, 0).catch(() => ({ status: 0, body: null }));
      if (result.status === 200) {
        remember(result.body);
        render(view, result.body);
      }
      follow(view, id);
    },
  });
  cancel.addEventListener('click', () => {
    // Terminates the upload on the service too: its task ends cancelled, its bytes removed.
    upload.abort(true).catch(() => {});
    showError(view, 'Upload cancelled.');
  });
  const previous = await upload.findPreviousUploads().catch(() => []);
  if (previous.length > 0) {
    if (await offerToContinue(view, previous[0])) {
      upload.resumeFromPreviousUpload(previous[0]);
    } else {
      for (const old of previous) upload.options.urlStorage.removeUpload(old.urlStorageKey).catch(() => {});
    }
  }
  upload.start();
}

$('upload-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const input = $('file-input');
  for (const file of input.files) upload(file);
  input.value = '';
});

$('lookup-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const id = $('lookup-input').value.trim();
  const message = $('lookup-message');
  message.textContent = '';
  let result = await fetchTask(id, 0).catch(() => ({ status: 503, body: null }));
  if (result.status === 401 && askForKey()) result = await fetchTask(id, 0).catch(() => ({ status: 503, body: null }));
  if (result.status !== 200) {
    message.textContent = result.status === 404 ? `Not found: no task has the id “${id}”.` : problemText(result.status, result.body);
    return;
  }
  remember(result.body);
  const existing = document.querySelector(`[data-task-id="${CSS.escape(result.body.id)}"]`);
  if (existing) existing.remove();
  const view = card(result.body.file_name);
  render(view, result.body);
  if (PENDING.has(result.body.status)) follow(view, result.body.id);
});

for (const type of ['dragenter', 'dragover']) {
  document.addEventListener(type, (event) => { event.preventDefault(); document.body.classList.add('dragging'); });
}
document.addEventListener('dragleave', () => document.body.classList.remove('dragging'));
document.addEventListener('drop', (event) => {
  event.preventDefault();
  document.body.classList.remove('dragging');
  for (const file of event.dataTransfer.files) upload(file);
});

// Recent tasks survive a reload; unfinished ones keep updating.
for (const saved of recent().reverse()) {
  const view = card(saved.file_name);
  follow(view, saved.id, 0);
}
