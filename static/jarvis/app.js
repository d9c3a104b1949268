// Jarvis chat page: sends with fetch, reads the streamed answer line by line, stops it, regenerates and edits,
// copies, keeps the latest words in view, and names a new conversation in the list once it has a title.
// Markdown is never parsed here: the server sends the answer as sanitized HTML while it streams and when done.
"use strict";

(function () {
  // Forms that ask before doing something that cannot be undone (inline handlers are blocked by the CSP).
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.dataset.confirm)) {
        event.preventDefault();
      }
    });
  });

  const section = document.getElementById("conversation");
  if (!section) {
    return;
  }
  const strings = section.dataset;
  const scroller = document.getElementById("scroller");
  const list = document.getElementById("messages");
  const jump = document.getElementById("jump");
  const listToggle = section.querySelector(".list-toggle");
  let conversationUrl = strings.conversationUrl || "";

  // --- The conversation list on a phone: a panel over the page -------------------------------------------

  function showList(open) {
    document.body.classList.toggle("show-list", open);
    listToggle.setAttribute("aria-expanded", String(open));
  }
  listToggle.addEventListener("click", function () {
    showList(!document.body.classList.contains("show-list"));
  });

  // --- Keeping the newest words in view, unless the person scrolled up to read --------------------------

  let following = true;
  let lastTop = scroller.scrollTop;

  function atBottom() {
    return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 48;
  }

  function toBottom() {
    scroller.scrollTop = scroller.scrollHeight;
  }

  // Only a move up stops the following (the page's own scrolling only ever goes down, and the text may grow
  // between a scroll and its event); reaching the bottom again resumes it.
  scroller.addEventListener(
    "scroll",
    function () {
      const top = scroller.scrollTop;
      if (top < lastTop - 1) {
        following = atBottom();
      } else if (atBottom()) {
        following = true;
      }
      lastTop = top;
      jump.hidden = following;
    },
    { passive: true },
  );

  // Whatever changes size (an answer growing, the message box growing, a phone keyboard opening) keeps
  // the bottom in view while following; otherwise a button offers the way back down.
  const watcher = new ResizeObserver(function () {
    if (following) {
      toBottom();
    } else {
      jump.hidden = false;
    }
  });
  watcher.observe(list);
  watcher.observe(scroller);

  jump.addEventListener("click", function () {
    following = true;
    jump.hidden = true;
    toBottom();
  });

  // --- Copying ----------------------------------------------------------------------------------------

  async function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      try {
        await navigator.clipboard.writeText(text);
        return true;
      } catch (error) {
        // Refused (no permission): fall back to the old way below.
      }
    }
    const scratch = document.createElement("textarea");
    scratch.value = text;
    scratch.setAttribute("readonly", "");
    scratch.className = "visually-hidden";
    document.body.appendChild(scratch);
    scratch.select();
    let copied = false;
    try {
      copied = document.execCommand("copy");
    } catch (error) {
      copied = false;
    }
    scratch.remove();
    return copied;
  }

  async function copyFrom(button, text) {
    const copied = await copyText(text);
    const label = button.textContent;
    button.textContent = copied ? strings.msgCopied : strings.msgCopyFailed;
    button.classList.toggle("done", copied);
    window.setTimeout(function () {
      button.textContent = label === strings.msgCopied ? strings.msgCopy : label;
      button.classList.remove("done");
    }, 2000);
  }

  // Code blocks get a copy button of their own (added here: the sanitizer lets no buttons into answers).
  function enhance(root) {
    root.querySelectorAll("pre").forEach(function (pre) {
      if (pre.querySelector(".code-copy")) {
        return;
      }
      const button = document.createElement("button");
      button.type = "button";
      button.className = "code-copy";
      button.dataset.action = "copy-code";
      button.textContent = strings.msgCopy;
      pre.appendChild(button);
    });
  }

  // --- Paths of the conversation's own URLs (a new conversation gets its URL with its first answer) ------

  function setPaths() {
    if (!conversationUrl) {
      return;
    }
    document.querySelectorAll("[data-path]").forEach(function (element) {
      const url = conversationUrl + element.dataset.path;
      if (element.tagName === "FORM") {
        element.action = url;
      } else if (element.tagName === "A") {
        element.href = url;
      }
    });
  }

  list.addEventListener("click", function (event) {
    const button = event.target.closest("button[data-action]");
    if (!button) {
      return;
    }
    const item = button.closest("li.msg");
    const action = button.dataset.action;
    if (action === "copy") {
      copyFrom(button, item.dataset.source || item.querySelector(".body").innerText);
    } else if (action === "copy-code") {
      const pre = button.closest("pre");
      const code = pre.querySelector("code");
      copyFrom(button, code ? code.textContent : pre.textContent.slice(0, -button.textContent.length));
    } else if (action === "regenerate") {
      regenerate(item);
    } else if (action === "edit") {
      edit(item);
    }
  });

  enhance(list);
  toBottom();

  // A search result links to the message that says what was looked for: show that one, not the newest.
  const found = /^#message-\d+$/.test(location.hash) && document.getElementById(location.hash.slice(1));
  if (found) {
    following = false;
    found.classList.add("found");
    found.scrollIntoView({ block: "center" });
  }

  const form = document.getElementById("composer");
  if (!form) {
    return;
  }

  // --- Writing and sending ----------------------------------------------------------------------------

  const textarea = form.querySelector("textarea");
  const sendButton = form.querySelector("[data-role=send]");
  const stopButton = form.querySelector("[data-role=stop]");
  const alertBox = document.getElementById("composer-alert");
  const noteBox = document.getElementById("composer-note");
  const csrfToken = form.querySelector("input[name=csrfmiddlewaretoken]").value;
  const text = form.dataset;
  let controller = null;
  let noteTimer = null;

  function showAlert(message) {
    alertBox.textContent = message || "";
    alertBox.hidden = !message;
  }

  function showNote(message) {
    noteBox.textContent = message;
    noteBox.hidden = false;
    window.clearTimeout(noteTimer);
    noteTimer = window.setTimeout(function () {
      noteBox.hidden = true;
    }, 4000);
  }

  function addActions(container, role) {
    const template = document.getElementById("tpl-actions-" + role);
    if (template) {
      container.appendChild(template.content.cloneNode(true));
    }
  }

  function newMessage(role, before) {
    const hint = document.getElementById("empty-hint");
    if (hint) {
      hint.remove();
    }
    const item = document.createElement("li");
    item.className = "msg msg-" + role;
    const body = document.createElement("div");
    body.className = role === "user" ? "body plain" : "body markdown";
    item.appendChild(body);
    list.insertBefore(item, before || null);
    return { item: item, body: body };
  }

  function newQuestion(message, before) {
    const question = newMessage("user", before);
    question.body.textContent = message;
    addActions(question.item, "user");
    return question;
  }

  function setStatus(answer, status) {
    answer.item.classList.remove("status-pending", "status-complete", "status-failed", "status-incomplete");
    answer.item.classList.add("status-" + status);
  }

  function setBusy(busy) {
    sendButton.disabled = busy;
    stopButton.hidden = !busy;
    section.classList.toggle("busy", busy);
  }

  function note(answer, message, className) {
    const paragraph = document.createElement("p");
    paragraph.className = className;
    paragraph.textContent = message;
    answer.item.insertBefore(paragraph, answer.foot);
  }

  function finish(answer, status, source) {
    answer.body.classList.remove("streaming");
    setStatus(answer, status);
    answer.item.dataset.source = source;
    addActions(answer.foot, "assistant");
  }

  async function errorFrom(response) {
    const type = response.headers.get("content-type") || "";
    if (type.startsWith("application/json")) {
      const data = await response.json();
      return data.message || text.msgFailed;
    }
    if (response.redirected || response.status === 403) {
      return text.msgSignedOut;
    }
    return text.msgFailed;
  }

  function conversationStarted(started) {
    conversationUrl = started.url;
    section.dataset.conversationUrl = started.url;
    window.history.replaceState(null, "", started.url);
    document.body.classList.add("has-conversation");
    form.action = started.url + "send/";
    setPaths();
    document.getElementById("conversation-settings").hidden = false;
    setTitle(started.title);
    const empty = document.querySelector("#conversation-list .empty");
    if (empty) {
      empty.remove();
    }
    const entry = document.createElement("li");
    entry.className = "current";
    entry.dataset.conversationId = started.id;
    const link = document.createElement("a");
    link.href = started.url;
    link.setAttribute("aria-current", "page");
    const title = document.createElement("span");
    title.className = "title";
    title.textContent = started.title;
    link.appendChild(title);
    entry.appendChild(link);
    document.getElementById("conversation-list").prepend(entry);
  }

  function setTitle(title) {
    document.getElementById("conversation-title").textContent = title;
    document.title = title + " · Jarvis";
    const entry = document.querySelector("#conversation-list li.current .title");
    if (entry) {
      entry.textContent = title;
    }
  }

  // The title job runs in the background after the first answer; ask a few times, ever less often.
  async function awaitTitle() {
    if (!section.dataset.untitled) {
      return;
    }
    const url = conversationUrl;
    for (const seconds of [1, 1, 2, 2, 3, 5, 8, 10, 15, 15]) {
      await new Promise(function (resolve) {
        window.setTimeout(resolve, seconds * 1000);
      });
      if (url !== conversationUrl) {
        return;
      }
      try {
        const response = await fetch(url + "title/", { headers: { Accept: "application/json" } });
        if (!response.ok) {
          return;
        }
        const data = await response.json();
        setTitle(data.title);
        if (data.titled) {
          section.dataset.untitled = "";
          return;
        }
      } catch (error) {
        return;
      }
    }
  }

  // Post to `url` and show the streamed answer in `turn.answer`; `turn.undo` puts things back when nothing
  // was stored, `turn.started` runs once the turn is stored.
  async function stream(url, params, turn) {
    const answer = turn.answer;
    answer.foot = document.createElement("div");
    answer.foot.className = "msg-foot";
    answer.item.appendChild(answer.foot);
    setStatus(answer, "pending");
    answer.body.classList.add("streaming");
    following = true;
    toBottom();
    controller = new AbortController();
    setBusy(true);
    let written = "";
    let finished = false;
    try {
      const response = await fetch(url, {
        method: "POST",
        body: params,
        headers: { "X-CSRFToken": csrfToken, Accept: "application/x-ndjson" },
        credentials: "same-origin",
        signal: controller.signal,
      });
      const type = response.headers.get("content-type") || "";
      if (!response.ok || !type.startsWith("application/x-ndjson")) {
        // Nothing was stored: put everything back so it can be fixed and sent again.
        turn.undo();
        showAlert(await errorFrom(response));
        finished = true;
        return;
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const chunk = await reader.read();
        if (chunk.done) {
          break;
        }
        buffer += decoder.decode(chunk.value, { stream: true });
        let newline;
        while ((newline = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, newline);
          buffer = buffer.slice(newline + 1);
          if (!line.trim()) {
            continue;
          }
          const event = JSON.parse(line);
          if (event.type === "start") {
            if (turn.question) {
              turn.question.item.dataset.messageId = event.question_id;
            }
            answer.item.dataset.messageId = event.message_id;
            if (event.conversation) {
              conversationStarted(event.conversation);
            }
            if (turn.started) {
              turn.started();
            }
          } else if (event.type === "tool" && window.JarvisTools) {
            window.JarvisTools.step(answer, event);
          } else if (event.type === "delta") {
            written += event.text;
          } else if (event.type === "render") {
            answer.body.innerHTML = event.html;
            enhance(answer.body);
          } else if (event.type === "done") {
            answer.body.innerHTML = event.html;
            enhance(answer.body);
            if (window.JarvisTools) {
              window.JarvisTools.sources(answer, event.sources, text.msgSources);
            }
            if (window.JarvisMedia && event.pictures && event.pictures.length) {
              window.JarvisMedia.pictures(answer, event.pictures);
            }
            const meta = document.createElement("p");
            meta.className = "meta";
            meta.textContent = event.meta;
            answer.foot.appendChild(meta);
            finish(answer, "complete", written);
            finished = true;
            awaitTitle();
          } else if (event.type === "error") {
            if (event.html) {
              answer.body.innerHTML = event.html;
              enhance(answer.body);
            }
            finish(answer, event.html ? "incomplete" : "failed", written);
            note(answer, event.message, "msg-error");
            finished = true;
          }
        }
      }
      if (!finished) {
        finish(answer, "incomplete", written);
        note(answer, text.msgBroken, "msg-error");
      }
    } catch (error) {
      if (!finished) {
        finish(answer, "incomplete", written);
        note(answer, error.name === "AbortError" ? text.msgStopped : text.msgBroken, "msg-note");
      }
    } finally {
      controller = null;
      setBusy(false);
      // Ready for the next message; on a touch screen the keyboard is not pushed up again unasked.
      if (!window.matchMedia("(pointer: coarse)").matches) {
        textarea.focus();
      }
    }
  }

  function checked(message) {
    if (!message.trim()) {
      showAlert(text.msgEmpty);
      return false;
    }
    if (message.length > Number(text.maxChars)) {
      showAlert(text.msgTooLong);
      return false;
    }
    showAlert("");
    return true;
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (controller) {
      return;
    }
    const message = textarea.value;
    if (!checked(message)) {
      return;
    }
    textarea.value = "";
    // The browser's time zone says what "now" is for the date and time tool.
    const params = new URLSearchParams({ text: message, tz: Intl.DateTimeFormat().resolvedOptions().timeZone || "" });
    if (!conversationUrl) {
      // The first message also says whom to talk to and with which model, as chosen below the box.
      form.querySelectorAll(".options select").forEach(function (select) {
        params.append(select.name, select.value);
      });
    }
    const question = newQuestion(message);
    const answer = newMessage("assistant");
    stream(form.action, params, {
      question: question,
      answer: answer,
      undo: function () {
        question.item.remove();
        answer.item.remove();
        textarea.value = message;
      },
    });
  });

  function regenerate(item) {
    if (controller || !conversationUrl) {
      return;
    }
    showAlert("");
    const answer = newMessage("assistant", item.nextSibling);
    item.hidden = true;
    stream(conversationUrl + "regenerate/", new URLSearchParams(), {
      answer: answer,
      undo: function () {
        answer.item.remove();
        item.hidden = false;
      },
      started: function () {
        item.remove();
      },
    });
  }

  function edit(item) {
    if (controller || !conversationUrl || !item.dataset.messageId || item.querySelector(".editor")) {
      return;
    }
    const body = item.querySelector(".body");
    const editor = document.createElement("form");
    editor.className = "editor";
    const field = document.createElement("textarea");
    field.value = body.textContent;
    field.setAttribute("aria-label", section.querySelector("label[for=id_text]").textContent);
    const buttons = document.createElement("div");
    buttons.className = "editor-actions";
    const cancel = document.createElement("button");
    cancel.type = "button";
    cancel.textContent = strings.msgCancel;
    const save = document.createElement("button");
    save.type = "submit";
    save.className = "primary";
    save.textContent = strings.msgSave;
    buttons.append(cancel, save);
    editor.append(field, buttons);
    body.hidden = true;
    item.classList.add("editing");
    item.insertBefore(editor, body.nextSibling);
    field.focus();

    function close() {
      editor.remove();
      body.hidden = false;
      item.classList.remove("editing");
    }

    cancel.addEventListener("click", close);
    field.addEventListener("keydown", function (event) {
      if (event.key === "Escape") {
        event.stopPropagation();
        close();
      } else if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
        event.preventDefault();
        editor.requestSubmit();
      }
    });
    editor.addEventListener("submit", function (event) {
      event.preventDefault();
      const message = field.value;
      if (controller || !checked(message)) {
        return;
      }
      close();
      // The question and everything after it give way to the new wording (kept on record as superseded).
      const replaced = [];
      for (let node = item; node; node = node.nextElementSibling) {
        replaced.push(node);
      }
      replaced.forEach(function (node) {
        node.hidden = true;
      });
      const question = newQuestion(message);
      const answer = newMessage("assistant");
      stream(conversationUrl + "m/" + item.dataset.messageId + "/edit/", new URLSearchParams({ text: message }), {
        question: question,
        answer: answer,
        undo: function () {
          question.item.remove();
          answer.item.remove();
          replaced.forEach(function (node) {
            node.hidden = false;
          });
        },
        started: function () {
          replaced.forEach(function (node) {
            node.remove();
          });
        },
      });
    });
  }

  stopButton.addEventListener("click", function () {
    if (controller) {
      controller.abort();
    }
  });

  document.addEventListener("keydown", function (event) {
    if (event.key !== "Escape") {
      return;
    }
    if (controller) {
      event.preventDefault();
      controller.abort();
    } else if (document.body.classList.contains("show-list")) {
      showList(false);
    }
  });

  textarea.addEventListener("keydown", function (event) {
    // Enter sends; Shift+Enter is a new line; Enter that confirms an input method (pinyin) is not a send.
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  // Persona and model: chosen for the first message, or changed at once in a conversation.
  form.querySelectorAll(".options select").forEach(function (select) {
    select.addEventListener("change", async function () {
      if (!conversationUrl) {
        return;
      }
      try {
        const response = await fetch(conversationUrl + select.dataset.path, {
          method: "POST",
          body: new URLSearchParams({ [select.name]: select.value }),
          headers: { "X-CSRFToken": csrfToken, Accept: "application/json" },
          credentials: "same-origin",
        });
        const data = await errorOrData(response);
        if (response.ok) {
          showAlert("");
          showNote(data.message);
        } else {
          showAlert(data.message);
        }
      } catch (error) {
        showAlert(text.msgFailed);
      }
    });
  });

  async function errorOrData(response) {
    const type = response.headers.get("content-type") || "";
    if (type.startsWith("application/json")) {
      return response.json();
    }
    return { message: await errorFrom(response) };
  }

  // A conversation for what the page adds besides a message (a document, a picture) before the first one:
  // started with the persona and model chosen below the box; resolves to its address.
  // Several files dropped at once share one start: the first call's promise is kept until it settles.
  let starting = null;
  function ensureConversation() {
    if (conversationUrl) {
      return Promise.resolve(conversationUrl);
    }
    if (!starting) {
      starting = startConversation().finally(function () {
        starting = null;
      });
    }
    return starting;
  }

  async function startConversation() {
    const params = new URLSearchParams();
    form.querySelectorAll(".options select").forEach(function (select) {
      params.append(select.name, select.value);
    });
    const response = await fetch(text.startUrl, {
      method: "POST",
      body: params,
      headers: { "X-CSRFToken": csrfToken, Accept: "application/json" },
      credentials: "same-origin",
    });
    const data = await errorOrData(response);
    if (!response.ok) {
      throw new Error(data.message || text.msgFailed);
    }
    conversationStarted(data.conversation);
    return conversationUrl;
  }
  window.JarvisConversation = { ensure: ensureConversation };

  setPaths();
  textarea.focus();
})();
