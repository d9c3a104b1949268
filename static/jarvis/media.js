// Jarvis chat page, pictures and speech: the play button under each answer (read out on demand, then kept),
// "/image PROMPT" or the Draw button in the composer, and "Change this picture" under each picture.
// Self-contained beside app.js: it adds to the page and only takes over a submit that asks for a picture.
"use strict";

(function () {
  const list = document.getElementById("messages");
  if (!list) {
    return;
  }
  const form = document.getElementById("composer");
  const csrfInput = document.querySelector("input[name=csrfmiddlewaretoken]");
  const csrfToken = csrfInput ? csrfInput.value : "";
  const IMAGE_COMMAND = /^\/image(?:@\w+)?(?:\s+|$)/i;

  async function post(url, data) {
    const response = await fetch(url, {
      method: "POST",
      body: data,
      headers: { "X-CSRFToken": csrfToken, Accept: "application/json" },
      credentials: "same-origin",
    });
    const type = response.headers.get("content-type") || "";
    const payload = type.startsWith("application/json") ? await response.json() : null;
    return { response: response, payload: payload };
  }

  function errorNote(parent, message) {
    const note = document.createElement("p");
    note.className = "msg-error";
    note.textContent = message;
    parent.appendChild(note);
  }

  // --- Listening to an answer -------------------------------------------------------------------

  function playIn(box, url) {
    let audio = box.querySelector("audio");
    if (!audio) {
      audio = document.createElement("audio");
      audio.controls = true;
      audio.preload = "metadata";
      box.appendChild(audio);
    }
    if (audio.getAttribute("src") !== url) {
      audio.src = url;
    }
    audio.play().catch(function () {
      // Autoplay may be refused; the controls are there to press.
    });
  }

  async function listen(button) {
    const box = button.closest(".speech");
    if (button.dataset.audio) {
      playIn(box, button.dataset.audio);
      return;
    }
    button.disabled = true;
    box.querySelectorAll(".msg-error").forEach(function (old) {
      old.remove();
    });
    try {
      const result = await post(button.dataset.speech, new URLSearchParams());
      if (result.payload && result.payload.type === "done") {
        button.dataset.audio = result.payload.url;
        playIn(box, result.payload.url);
      } else {
        errorNote(box, (result.payload && result.payload.message) || list.dataset.msgFailed || "Error");
      }
    } catch (error) {
      errorNote(box, error.message);
    } finally {
      button.disabled = false;
    }
  }

  function addPlayButton(item) {
    const id = item.dataset.messageId;
    if (!id || item.querySelector(".speech, figure.picture")) {
      return;
    }
    const box = document.createElement("div");
    box.className = "speech";
    const button = document.createElement("button");
    button.type = "button";
    button.className = "play";
    button.dataset.speech = list.dataset.speechTemplate.replace("/0/", "/" + id + "/");
    button.textContent = "▶ " + list.dataset.labelListen;
    box.appendChild(button);
    item.appendChild(box);
  }

  // Answers written after the page loaded (app.js streams them) get their play button once complete.
  new MutationObserver(function () {
    list.querySelectorAll("li.msg-assistant.status-complete, li.msg-assistant.status-incomplete").forEach(addPlayButton);
  }).observe(list, { subtree: true, childList: true, attributes: true, attributeFilter: ["class"] });

  list.addEventListener("click", function (event) {
    const play = event.target.closest("button.play");
    if (play) {
      listen(play);
      return;
    }
    const edit = event.target.closest("button.picture-edit");
    if (edit && form) {
      startEditing(edit.closest("figure.picture"));
    }
  });

  // --- Drawing ----------------------------------------------------------------------------------

  if (!form) {
    return;
  }
  const textarea = form.querySelector("textarea");
  const alertBox = document.getElementById("composer-alert");
  const editing = form.querySelector("[data-role=editing]");
  const buttons = form.querySelectorAll("[data-role=send], [data-role=draw]");
  let drawing = false;

  function showAlert(message) {
    alertBox.textContent = message || "";
    alertBox.hidden = !message;
  }

  function startEditing(figure) {
    form.dataset.editOf = figure.dataset.mediaId;
    editing.querySelector("span").textContent =
      form.dataset.msgEditing + " " + figure.querySelector("figcaption").textContent;
    editing.hidden = false;
    textarea.focus();
  }

  function stopEditing() {
    delete form.dataset.editOf;
    editing.hidden = true;
  }

  function item(role, status) {
    const hint = document.getElementById("empty-hint");
    if (hint) {
      hint.remove();
    }
    const li = document.createElement("li");
    li.className = "msg msg-" + role + (status ? " status-" + status : "");
    list.appendChild(li);
    return li;
  }

  function figureFor(picture) {
    const figure = document.createElement("figure");
    figure.className = "picture";
    figure.dataset.mediaId = picture.id;
    const img = document.createElement("img");
    img.src = picture.url;
    img.alt = picture.caption;
    if (picture.width) {
      img.width = picture.width;
      img.height = picture.height;
    }
    const caption = document.createElement("figcaption");
    caption.textContent = picture.caption;
    const edit = document.createElement("button");
    edit.type = "button";
    edit.className = "picture-edit";
    edit.dataset.mediaId = picture.id;
    edit.textContent = form.dataset.labelEdit;
    figure.append(img, caption, edit);
    return figure;
  }

  async function draw(text) {
    let imageUrl;
    try {
      // On a new page the conversation starts with its first picture.
      imageUrl = (await window.JarvisConversation.ensure()) + "image/";
    } catch (error) {
      textarea.value = text;
      showAlert(error.message);
      return;
    }
    const message = IMAGE_COMMAND.test(text) ? text : "/image " + text;
    // A new conversation is known by its first question until it gets a title (as app.js does for chat).
    const heading = document.querySelector(".conversation-head h1[data-untitled]");
    if (heading) {
      heading.textContent = message.slice(0, 80);
      heading.removeAttribute("data-untitled");
    }
    const question = item("user");
    const body = document.createElement("div");
    body.className = "body plain";
    body.textContent = message;
    question.appendChild(body);
    const answer = item("assistant", "pending");
    const waiting = document.createElement("p");
    waiting.className = "msg-note drawing";
    waiting.textContent = form.dataset.msgDrawing;
    answer.appendChild(waiting);
    answer.scrollIntoView({ block: "end" });
    const data = new URLSearchParams({ text: message });
    if (form.dataset.editOf) {
      data.set("edit_of", form.dataset.editOf);
    }
    drawing = true;
    buttons.forEach(function (button) {
      button.disabled = true;
    });
    try {
      const result = await post(imageUrl, data);
      const payload = result.payload || {};
      if (!payload.question_id) {
        // Refused before anything was stored: give the text back to fix.
        question.remove();
        answer.remove();
        textarea.value = text;
        showAlert(payload.message || form.dataset.msgFailed);
        return;
      }
      question.dataset.messageId = payload.question_id;
      answer.dataset.messageId = payload.message_id;
      waiting.remove();
      if (payload.type === "done") {
        answer.appendChild(figureFor(payload.picture));
        const meta = document.createElement("p");
        meta.className = "meta";
        meta.textContent = payload.meta;
        answer.appendChild(meta);
        answer.className = "msg msg-assistant status-complete";
        stopEditing();
      } else {
        answer.className = "msg msg-assistant status-failed";
        errorNote(answer, payload.message);
      }
    } catch (error) {
      waiting.remove();
      answer.className = "msg msg-assistant status-incomplete";
      errorNote(answer, form.dataset.msgBroken);
    } finally {
      drawing = false;
      buttons.forEach(function (button) {
        button.disabled = false;
      });
      answer.scrollIntoView({ block: "end" });
    }
  }

  function submitPicture(text) {
    if (drawing) {
      return;
    }
    if (!text.replace(IMAGE_COMMAND, "").trim()) {
      showAlert(form.dataset.msgEmpty);
      return;
    }
    showAlert("");
    textarea.value = "";
    draw(text.trim());
  }

  // Capturing on the document runs before app.js's own submit handler, which then never sees a picture.
  document.addEventListener(
    "submit",
    function (event) {
      if (event.target !== form) {
        return;
      }
      const text = textarea.value;
      if (IMAGE_COMMAND.test(text.trim()) || (form.dataset.editOf && text.trim())) {
        event.preventDefault();
        event.stopImmediatePropagation();
        submitPicture(text);
      }
    },
    true,
  );

  form.querySelector("[data-role=draw]").addEventListener("click", function () {
    submitPicture(textarea.value);
  });
  form.querySelector("[data-role=edit-cancel]").addEventListener("click", stopEditing);

  // Pictures the model drew with the picture tool, shown under the streamed answer (app.js calls this).
  window.JarvisMedia = {
    pictures: function (answer, pictures) {
      pictures.forEach(function (picture) {
        answer.item.appendChild(figureFor(picture));
      });
    },
  };
})();
