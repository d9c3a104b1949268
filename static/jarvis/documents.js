// Jarvis chat page, documents: the attach button and drag-and-drop upload files to the conversation, each
// shown as a message whose chip follows the file's progress (reading, embedding, ready or failed).
"use strict";

(function () {
  const input = document.getElementById("id_document");
  const list = document.getElementById("messages");
  const form = document.getElementById("composer");
  if (!input || !list || !form) {
    return;
  }
  const attachButton = form.querySelector("[data-role=attach]");
  const alertBox = document.getElementById("composer-alert");
  const csrfToken = form.querySelector("input[name=csrfmiddlewaretoken]").value;
  const text = input.dataset;
  const dropArea = document.querySelector("section.conversation") || form;
  const POLL_MS = 1000;

  // The conversation's address (on a new page the conversation starts with its first document).
  function uploadUrl() {
    return document.getElementById("conversation").dataset.conversationUrl + "documents/";
  }

  function showAlert(message) {
    alertBox.textContent = message || "";
    alertBox.hidden = !message;
  }

  function chipFor(name) {
    const hint = document.getElementById("empty-hint");
    if (hint) {
      hint.remove();
    }
    const item = document.createElement("li");
    item.className = "msg msg-user";
    const chips = document.createElement("ul");
    chips.className = "document-chips";
    const chip = document.createElement("li");
    chip.className = "document-chip state-queued";
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = "📄 " + name;
    const state = document.createElement("span");
    state.className = "label";
    state.textContent = text.msgUploading;
    const bar = document.createElement("progress");
    bar.max = 100;
    chip.append(label, " ", state, bar);
    chips.appendChild(chip);
    item.appendChild(chips);
    list.appendChild(item);
    item.scrollIntoView({ block: "end" });
    return { item: item, chip: chip, state: state, bar: bar };
  }

  function show(view, status) {
    view.chip.className = "document-chip state-" + status.state;
    view.chip.dataset.documentId = status.id;
    view.state.textContent = status.label;
    if (status.busy) {
      view.bar.value = status.percent;
    } else {
      view.bar.remove();
    }
  }

  async function follow(view, url) {
    for (;;) {
      await new Promise(function (resolve) {
        setTimeout(resolve, POLL_MS);
      });
      const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (!response.ok) {
        view.state.textContent = text.msgFailed;
        return;
      }
      const status = await response.json();
      show(view, status);
      if (!status.busy) {
        return;
      }
    }
  }

  async function upload(file) {
    try {
      await window.JarvisConversation.ensure();
    } catch (error) {
      showAlert(error.message);
      return;
    }
    if (file.size > Number(text.maxBytes)) {
      showAlert(text.msgTooBig.replace("%(name)s", file.name));
      return;
    }
    const view = chipFor(file.name);
    const body = new FormData();
    body.append("file", file, file.name);
    try {
      const response = await fetch(uploadUrl(), {
        method: "POST",
        body: body,
        headers: { "X-CSRFToken": csrfToken, Accept: "application/json" },
        credentials: "same-origin",
      });
      const type = response.headers.get("content-type") || "";
      const data = type.startsWith("application/json") ? await response.json() : {};
      if (!response.ok) {
        // Nothing was stored: the chip goes, the reason stays in the alert above the message box.
        view.item.remove();
        showAlert(data.message || text.msgFailed);
        return;
      }
      view.item.dataset.messageId = data.message_id;
      show(view, data.document);
      if (data.document.busy) {
        await follow(view, data.status_url);
      }
    } catch (error) {
      view.item.remove();
      showAlert(text.msgFailed);
    }
  }

  function uploadAll(files) {
    showAlert("");
    Array.from(files).forEach(upload);
  }

  attachButton.addEventListener("click", function () {
    input.click();
  });
  input.addEventListener("change", function () {
    uploadAll(input.files);
    input.value = "";
  });

  let depth = 0;
  dropArea.dataset.dropHint = text.msgDrop;
  dropArea.addEventListener("dragenter", function (event) {
    if (event.dataTransfer && Array.from(event.dataTransfer.types).includes("Files")) {
      depth += 1;
      dropArea.classList.add("dropping");
    }
  });
  dropArea.addEventListener("dragleave", function () {
    depth = Math.max(depth - 1, 0);
    if (!depth) {
      dropArea.classList.remove("dropping");
    }
  });
  dropArea.addEventListener("dragover", function (event) {
    event.preventDefault();
  });
  dropArea.addEventListener("drop", function (event) {
    event.preventDefault();
    depth = 0;
    dropArea.classList.remove("dropping");
    if (event.dataTransfer && event.dataTransfer.files.length) {
      uploadAll(event.dataTransfer.files);
    }
  });

  // Files still being read when the page loaded keep moving too.
  list.querySelectorAll(".msg-user").forEach(function (item) {
    item.querySelectorAll(".document-chip").forEach(function (chip) {
      const bar = chip.querySelector("progress");
      if (bar) {
        const view = { item: item, chip: chip, state: chip.querySelector(".label"), bar: bar };
        follow(view, uploadUrl() + chip.dataset.documentId + "/");
      }
    });
  });
})();
