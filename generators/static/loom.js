// Loom admin: the little script the pages need (no inline scripts: the Content-Security-Policy forbids them).
document.addEventListener("change", function (event) {
  var target = event.target;
  if (target.matches && target.matches("[data-autosubmit]") && target.form) { target.form.requestSubmit(); }
});

// A refs input: picking a record from the lookup's list ("<title> #<id>") adds it to the chosen ones.
document.addEventListener("change", function (event) {
  var input = event.target;
  if (!input.matches || !input.matches("input[data-refs]")) { return; }
  var match = /#(\d+)\s*$/.exec(input.value);
  var picked = document.getElementById(input.getAttribute("data-picked"));
  if (!match || !picked) { return; }
  if (!picked.querySelector('input[value="' + match[1] + '"]')) {
    var item = document.createElement("li");
    var label = document.createElement("label");
    var box = document.createElement("input");
    box.type = "checkbox"; box.name = input.name; box.value = match[1]; box.checked = true;
    label.appendChild(box);
    label.appendChild(document.createTextNode(" " + input.value));
    item.appendChild(label);
    picked.appendChild(item);
  }
  input.value = "";
});

// A list's "select all": ticks or clears every row's box on the page (the server reads "_all" too,
// so the action works without JavaScript).
document.addEventListener("change", function (event) {
  var all = event.target;
  if (!all.matches || !all.matches("#select-all")) { return; }
  var table = all.closest("table");
  if (!table) { return; }
  table.querySelectorAll('tbody input[type="checkbox"][name="ids"]').forEach(function (box) {
    box.checked = all.checked;
  });
});
