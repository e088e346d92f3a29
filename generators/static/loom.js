// Loom admin: the little script the pages need (no inline scripts: the Content-Security-Policy forbids them).
document.addEventListener("change", function (event) {
  var target = event.target;
  if (target.matches && target.matches("[data-autosubmit]") && target.form) { target.form.requestSubmit(); }
});
