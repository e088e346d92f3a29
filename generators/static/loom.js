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
