// Jarvis chat page: the steps of an answer's tool calls while it streams ("tool" events), and its sources.
// The same markup as templates/botapp/_tool_steps.html draws after a reload. Text from tools is only ever
// set as text; links are only http(s).
"use strict";

window.JarvisTools = (function () {
  function safeUrl(url) {
    return typeof url === "string" && /^https?:\/\//i.test(url) ? url : null;
  }

  function link(source) {
    const url = safeUrl(source.url);
    if (!url) {
      return null;
    }
    const anchor = document.createElement("a");
    anchor.href = url;
    anchor.rel = "noopener noreferrer nofollow";
    anchor.target = "_blank";
    anchor.textContent = source.title || url;
    return anchor;
  }

  // One collapsible step per call, created when it starts and filled in when it ends.
  function step(answer, event) {
    let container = answer.item.querySelector(".tool-steps");
    if (!container) {
      container = document.createElement("div");
      container.className = "tool-steps";
      answer.item.insertBefore(container, answer.body);
    }
    let details = container.querySelector('[data-tool-id="' + Number(event.id) + '"]');
    if (!details) {
      details = document.createElement("details");
      details.dataset.toolId = String(Number(event.id));
      details.appendChild(document.createElement("summary"));
      container.appendChild(details);
    }
    details.className = "tool-step status-" + String(event.status).replace(/[^a-z]/g, "");
    details.querySelector("summary").textContent =
      event.label + (event.duration_ms !== null && event.duration_ms !== undefined ? " · " + event.duration_ms + " ms" : "");
    if (event.state !== "done") {
      return;
    }
    if (event.error) {
      const error = document.createElement("p");
      error.className = "tool-error";
      error.textContent = event.error;
      details.appendChild(error);
    }
    const links = (event.sources || []).map(link).filter(Boolean);
    if (links.length) {
      const list = document.createElement("ol");
      list.className = "tool-sources";
      links.forEach(function (anchor) {
        const item = document.createElement("li");
        item.appendChild(anchor);
        list.appendChild(item);
      });
      details.appendChild(list);
    }
  }

  // The pages the answer used, linked under it.
  function sources(answer, list, heading) {
    const links = (list || []).map(link).filter(Boolean);
    if (!links.length) {
      return;
    }
    const paragraph = document.createElement("p");
    paragraph.className = "sources";
    paragraph.appendChild(document.createTextNode(heading + " "));
    links.forEach(function (anchor, index) {
      if (index) {
        paragraph.appendChild(document.createTextNode(" · "));
      }
      paragraph.appendChild(anchor);
    });
    answer.body.insertAdjacentElement("afterend", paragraph);
  }

  return { step: step, sources: sources };
})();
