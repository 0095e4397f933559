// The console's only script: copy buttons and the playground's progress. Every page
// works without it (the progress then needs a reload).
"use strict";

function setupCopy() {
  document.querySelectorAll("[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var field = document.getElementById(button.getAttribute("data-copy"));
      var status = document.getElementById("copy-status");
      var done = function (text) { if (status) { status.textContent = text; } };
      field.select();
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(field.value).then(
          function () { done("Copied to the clipboard."); },
          function () { done("Copy failed: select the secret and copy it by hand."); });
      } else {
        done("Select the secret and copy it by hand.");
      }
    });
  });
}

function showImages(box, links, jobId) {
  box.textContent = "";
  links.forEach(function (link, i) {
    var anchor = document.createElement("a");
    anchor.href = link;
    var img = document.createElement("img");
    img.src = link;
    img.alt = "result image " + (i + 1) + " of job " + jobId;
    img.className = "result";
    anchor.appendChild(img);
    box.appendChild(anchor);
  });
}

function watchJob(section) {
  var url = section.getAttribute("data-status-url");
  var state = document.getElementById("job-state");
  var detail = document.getElementById("job-detail");
  var images = document.getElementById("job-images");
  var delay = 500;
  function poll() {
    fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (response) {
        if (!response.ok) { throw new Error("status " + response.status); }
        return response.json();
      })
      .then(function (job) {
        state.textContent = job.state;
        if (job.state === "completed") {
          showImages(images, job.images, job.id);
          detail.textContent = job.images.length + " image(s) ready.";
          return;
        }
        if (job.state === "failed") {
          detail.textContent = "Failed: " + (job.failure || "no reason given");
          return;
        }
        detail.textContent = "Attempts: " + job.attempts + ", status polls: " + job.polls;
        delay = Math.min(delay * 1.5, 3000);
        window.setTimeout(poll, delay);
      })
      .catch(function (error) {
        detail.textContent = "Could not read the job's progress (" + error.message + "); reload the page.";
      });
  }
  poll();
}

document.addEventListener("DOMContentLoaded", function () {
  setupCopy();
  var section = document.querySelector("[data-status-url]");
  if (section) { watchJob(section); }
});
