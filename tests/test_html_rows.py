"""HTML table rows read with their header (kbqa.html_rows) and quoted that way."""

from __future__ import annotations

from kbqa.answer import Source
from kbqa.html_rows import html_rows

HEAD = """我们测算了各模型生成 2048 个 token 时的平均速度（tokens/s）和显存。结果如下所示：

<table>
<tr>
<td>Model Size</td>
<td>Quantization</td>
<td>Speed (Tokens/s)</td>
<td>GPU Memory Usage</td>
</tr>
<tr>
<td rowspan="3">3B</td>
<td>BF16</td>
<td>61.20</td>
<td>6.10GB</td>
</tr>
<tr>
<td>Int8</td>
<td>58.75</td>
"""
TAIL = """<td>58.75</td>
<td>4.02GB</td>
</tr>
<tr>
<td>Int4</td>
<td>77.31</td>
<td>3.05GB</td>
</tr>
</table>

测试使用单张显卡。
"""


def test_rows_carry_their_header_and_the_cells_rowspan_brings_down() -> None:
    text = HEAD + TAIL[len("<td>58.75</td>\n") :]
    rows = html_rows(text)
    assert [r.shown for r in rows] == [
        "Model Size: 3B; Quantization: BF16; Speed (Tokens/s): 61.20; GPU Memory Usage: 6.10GB",
        "Model Size: 3B; Quantization: Int8; Speed (Tokens/s): 58.75; GPU Memory Usage: 4.02GB",
        "Model Size: 3B; Quantization: Int4; Speed (Tokens/s): 77.31; GPU Memory Usage: 3.05GB",
    ]
    for row in rows:
        assert text[row.start : row.end].startswith("<tr>")
        assert text[row.start : row.end].endswith("</tr>")


def test_a_table_cut_between_chunks_is_read_with_the_chunk_before() -> None:
    # The second chunk repeats the end of the first (ingest's overlap) and has no header.
    rows = html_rows(TAIL, lead=HEAD)
    assert [r.shown.split("; ")[:2] for r in rows] == [
        ["Model Size: 3B", "Quantization: Int8"],
        ["Model Size: 3B", "Quantization: Int4"],
    ]
    assert TAIL[rows[-1].start : rows[-1].end].startswith("<tr>\n<td>Int4")
    assert [r.shown for r in html_rows(TAIL)][-1] == "Int4; 77.31; 3.05GB"  # no header known


def test_text_without_a_table_has_no_rows_and_broken_markup_does_not_fail() -> None:
    assert html_rows("没有表格的文本。\n<b>粗体</b>") == []
    # A row cut by the chunk's end still counts; a cell cut in the middle does not.
    assert [r.shown for r in html_rows("</tr>\n<tr><td>a</td><td>b</td>")] == ["a; b"]
    assert html_rows("<tr><td>a") == []


def test_the_row_with_the_figure_is_quoted_not_the_sentence_introducing_the_table() -> None:
    from kbqa.answer_mode import extract

    text = HEAD + TAIL[len("<td>58.75</td>\n") :]
    sources = [Source(1, "c", "d", "zh/lark/README.md", None, "推理性能", text, 0.6, "kb")]
    question = "3B 的 Int4 模型生成 2048 个 token 的平均速度是每秒多少 token？"
    answer = extract(question, "zh", sources, lambda kb: None).answer
    assert "Speed (Tokens/s): 77.31" in answer and "<td>" not in answer
