"""Every published lesson executes top to bottom in this tier (CI: the simulator)."""
import nbformat
import pytest

from shared.course import lessons, syllabus

PUBLISHED = syllabus.published()


@pytest.mark.parametrize("d", PUBLISHED, ids=[d.tag for d in PUBLISHED])
def test_lesson_executes_and_renders(d, tmp_path):
    ipynb, html = lessons.render(d, tmp_path, execute=True, timeout=300)
    assert html.stat().st_size > 0
    errors = [o for cell in nbformat.read(ipynb, 4).cells if cell.cell_type == "code"
              for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{d.lesson}: a cell raised {errors[0].get('ename')}: {errors[0].get('evalue')}"
