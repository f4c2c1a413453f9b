// The portal's only script, embedded in pbx-node and served at
// /assets/portal.js. Every page works without it; it adds row selection
// (select all, the selected count on the bulk delete button) and asks
// before the delete buttons that say so.
'use strict';

document.addEventListener('DOMContentLoaded', () => {
  const selectAll = document.querySelector('[data-select-all]');
  const rows = Array.from(document.querySelectorAll('input[data-row]'));
  const bulk = document.querySelector('[data-bulk-action]');

  const refresh = () => {
    const selected = rows.filter((box) => box.checked).length;
    if (bulk) {
      bulk.disabled = selected === 0;
      bulk.textContent = selected ? `Delete selected (${selected})` : 'Delete selected';
    }
    if (selectAll) {
      selectAll.checked = selected > 0 && selected === rows.length;
      selectAll.indeterminate = selected > 0 && selected < rows.length;
    }
  };

  if (selectAll) {
    selectAll.addEventListener('change', () => {
      rows.forEach((box) => { box.checked = selectAll.checked; });
      refresh();
    });
  }
  rows.forEach((box) => box.addEventListener('change', refresh));
  refresh();

  document.querySelectorAll('button[data-confirm]').forEach((button) => {
    button.addEventListener('click', (event) => {
      if (!window.confirm(button.dataset.confirm)) event.preventDefault();
    });
  });
});
