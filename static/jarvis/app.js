// Jarvis chat page: sends a message with fetch, reads the streamed answer line by line, and can stop it.
// Streamed text is only ever shown as text; the sanitized HTML comes from the server when the answer is done.
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

  const form = document.getElementById("composer");
  if (!form) {
    return;
  }
  const list = document.getElementById("messages");
  const textarea = form.querySelector("textarea");
  const sendButton = form.querySelector("[data-role=send]");
  const stopButton = form.querySelector("[data-role=stop]");
  const alertBox = document.getElementById("composer-alert");
  const csrfToken = form.querySelector("input[name=csrfmiddlewaretoken]").value;
  const text = form.dataset;
  let controller = null;

  function showAlert(message) {
    alertBox.textContent = message || "";
    alertBox.hidden = !message;
  }

  function scrollToEnd() {
    list.lastElementChild && list.lastElementChild.scrollIntoView({ block: "end" });
  }

  function addMessage(role) {
    const hint = document.getElementById("empty-hint");
    if (hint) {
      hint.remove();
    }
    const item = document.createElement("li");
    item.className = "msg msg-" + role;
    const body = document.createElement("div");
    body.className = role === "user" ? "body plain" : "body markdown";
    item.appendChild(body);
    list.appendChild(item);
    return { item: item, body: body };
  }

  function setStatus(answer, status) {
    answer.item.classList.remove("status-pending", "status-complete", "status-failed", "status-incomplete");
    answer.item.classList.add("status-" + status);
  }

  function setBusy(busy) {
    sendButton.disabled = busy;
    stopButton.hidden = !busy;
    form.classList.toggle("busy", busy);
  }

  function note(answer, message, className) {
    const paragraph = document.createElement("p");
    paragraph.className = className;
    paragraph.textContent = message;
    answer.item.appendChild(paragraph);
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

  async function send(message) {
    // A new conversation is known by its first question until it gets a title.
    const heading = document.querySelector(".conversation-head h1[data-untitled]");
    if (heading) {
      heading.textContent = message.slice(0, 80);
      heading.removeAttribute("data-untitled");
    }
    const question = addMessage("user");
    question.body.textContent = message;
    const answer = addMessage("assistant");
    setStatus(answer, "pending");
    answer.body.classList.add("streaming");
    scrollToEnd();
    controller = new AbortController();
    setBusy(true);
    let written = "";
    let finished = false;
    try {
      const response = await fetch(form.action, {
        method: "POST",
        body: new URLSearchParams({ text: message, tz: Intl.DateTimeFormat().resolvedOptions().timeZone || "" }),
        headers: { "X-CSRFToken": csrfToken, Accept: "application/x-ndjson" },
        credentials: "same-origin",
        signal: controller.signal,
      });
      const type = response.headers.get("content-type") || "";
      if (!response.ok || !type.startsWith("application/x-ndjson")) {
        // Nothing was stored: give the text back so it can be fixed and sent again.
        question.item.remove();
        answer.item.remove();
        textarea.value = message;
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
            question.item.dataset.messageId = event.question_id;
            answer.item.dataset.messageId = event.message_id;
          } else if (event.type === "tool" && window.JarvisTools) {
            window.JarvisTools.step(answer, event);
          } else if (event.type === "delta") {
            written += event.text;
            answer.body.textContent = written;
            scrollToEnd();
          } else if (event.type === "done") {
            answer.body.classList.remove("streaming");
            answer.body.innerHTML = event.html;
            setStatus(answer, "complete");
            if (window.JarvisTools) {
              window.JarvisTools.sources(answer, event.sources, text.msgSources);
            }
            if (window.JarvisMedia && event.pictures && event.pictures.length) {
              window.JarvisMedia.pictures(answer, event.pictures);
            }
            note(answer, event.meta, "meta");
            finished = true;
          } else if (event.type === "error") {
            answer.body.classList.remove("streaming");
            if (event.html) {
              answer.body.innerHTML = event.html;
              setStatus(answer, "incomplete");
            } else {
              setStatus(answer, "failed");
            }
            note(answer, event.message, "msg-error");
            finished = true;
          }
        }
      }
      if (!finished) {
        answer.body.classList.remove("streaming");
        setStatus(answer, "incomplete");
        note(answer, text.msgBroken, "msg-error");
      }
    } catch (error) {
      answer.body.classList.remove("streaming");
      setStatus(answer, "incomplete");
      note(answer, error.name === "AbortError" ? text.msgStopped : text.msgBroken, "msg-note");
    } finally {
      controller = null;
      setBusy(false);
      scrollToEnd();
    }
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (controller) {
      return;
    }
    const message = textarea.value;
    if (!message.trim()) {
      showAlert(text.msgEmpty);
      return;
    }
    if (message.length > Number(text.maxChars)) {
      showAlert(text.msgTooLong);
      return;
    }
    showAlert("");
    textarea.value = "";
    send(message);
  });

  stopButton.addEventListener("click", function () {
    if (controller) {
      controller.abort();
    }
  });

  textarea.addEventListener("keydown", function (event) {
    // Enter sends; Shift+Enter is a new line; Enter that confirms an input method (pinyin) is not a send.
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  scrollToEnd();
})();
