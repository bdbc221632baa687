// Small DOM helpers. Elements are built without innerHTML, so names from uploads never become markup.
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
  element.append(...children);
  return element;
}

export const byId = (id) => document.getElementById(id);

/** Show ``text`` in the element ``id``; an empty text hides it, so no blank boxes linger. */
export function say(id, text) {
  if (byId(id).textContent !== text) byId(id).textContent = text; // a live region: no repeats
  byId(id).hidden = !text;
}
