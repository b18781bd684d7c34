"""Every supported format, built for real in tmp_path, loads into the expected Sections."""

from __future__ import annotations

import json

from ingest_documents import MAX_BYTES, docx_bytes, load, pdf_bytes, xlsx_bytes
from reportlab.lib.pdfencrypt import StandardEncryption

from kbqa.ingest.loaders import LONG_TAIL_EXTENSIONS, SUPPORTED_EXTENSIONS, load_document
from kbqa.ingest.tables import TableSection
from kbqa.ingest.types import LoadOptions, Section


def test_supported_extensions() -> None:
    expected = {".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx", ".pptx", ".csv"}
    expected |= {".xlsx"}
    images = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}
    long_tail = LONG_TAIL_EXTENSIONS  # where the unstructured extra is installed
    assert expected | {".json", ".jsonl"} | images | long_tail == SUPPORTED_EXTENSIONS


def test_extension_case_is_ignored(write) -> None:
    assert load(write("NOTES.TXT", "upper case name")) == [Section("upper case name")]


def test_txt_utf8(write) -> None:
    sections = load(write("a.txt", "Aurora 2.1 发布。\r\nSecond line.\n"))
    assert sections == [Section("Aurora 2.1 发布。\nSecond line.\n")]


def test_txt_utf16_with_bom(write) -> None:
    text = "显存需求约 6 GB。\nUTF-16 text."
    assert load(write("u16.txt", text, "utf-16"))[0].text == text


def test_txt_gbk_and_gb18030(write) -> None:
    text = "Aurora 内部知识库安装指南：INT4 量化后显存需求约 6 GB。"
    assert load(write("gbk.txt", text, "gbk"))[0].text == text
    rare = text + "𠮷字只在 GB18030 中。"  # outside GBK: a four-byte GB18030 sequence
    assert load(write("gb18030.txt", rare, "gb18030"))[0].text == rare


def test_markdown_heading_paths(write) -> None:
    text = (
        "Intro before any heading.\n\n"
        "# 安装指南\n第一步：下载。\n\n"
        "```bash\n# a comment, not a heading\npip install aurora\n```\n\n"
        "## 环境要求 ##\nPython 3.11\n\n"
        "### GPU\nINT4 需要 6 GB。\n\n"
        "## 升级\n运行 aurora upgrade。\n\n"
        "Setext Title\n============\nbody one\n\n"
        "Sub title\n---------\nbody two\n"
    )
    sections = load(write("guide.md", text))
    assert [(s.heading, s.text.splitlines()[0]) for s in sections] == [
        (None, "Intro before any heading."),
        ("安装指南", "第一步：下载。"),
        ("安装指南 > 环境要求", "Python 3.11"),
        ("安装指南 > 环境要求 > GPU", "INT4 需要 6 GB。"),
        ("安装指南 > 升级", "运行 aurora upgrade。"),
        ("Setext Title", "body one"),
        ("Setext Title > Sub title", "body two"),
    ]
    assert "# a comment, not a heading" in sections[1].text


def test_markdown_extension_alias(write) -> None:
    assert load(write("a.markdown", "# T\nbody"))[0].heading == "T"


def test_html_with_declared_gbk_charset(write) -> None:
    page = """<html><head><meta charset="gbk"><title>FAQ</title>
    <style>p { color: red }</style><script>var hidden = 1;</script></head>
    <body><nav>首页 | 下载</nav>
    <h1>Aurora 常见问题</h1><p>Aurora 是<b>本地</b>知识库。</p>
    <h2>显存</h2><p>INT4 量化后显存需求约 6 GB。</p>
    <table><tr><th>模式</th><th>显存</th></tr><tr><td>FP16</td><td>13 GB</td></tr>
    <tr><td>INT4</td><td>6 GB</td></tr></table>
    <h2>命令</h2><ul><li>aurora ask</li><li>aurora serve</li></ul>
    <pre>aurora ingest ./docs
  --kb default</pre></body></html>"""
    sections = load(write("faq.html", page, "gbk"))
    text = "\n".join(s.text for s in sections)
    assert "hidden" not in text and "首页" not in text and "color" not in text
    assert sections[0] == Section("Aurora 是本地知识库。", heading="Aurora 常见问题")
    assert sections[1] == Section("INT4 量化后显存需求约 6 GB。", heading="Aurora 常见问题 > 显存")
    assert sections[2] == TableSection(
        "模式: FP16; 显存: 13 GB\n模式: INT4; 显存: 6 GB", heading="Aurora 常见问题 > 显存"
    )
    assert sections[3].heading == "Aurora 常见问题 > 命令"
    assert sections[3].text == "aurora ask\naurora serve\n\naurora ingest ./docs\n  --kb default"


def test_htm_without_declared_charset_is_detected(write) -> None:
    page = "<html><body><h1>标题</h1><p>没有声明编码的中文网页内容。</p></body></html>"
    expected = Section("没有声明编码的中文网页内容。", heading="标题")
    assert load(write("a.htm", page, "gb18030")) == [expected]


def test_pdf_pages_are_numbered_from_one(write) -> None:
    data = pdf_bytes([["第一页：安装 Aurora。", "Page one."], ["第二页：显存 6 GB。"]])
    sections = load(write("manual.pdf", data))
    assert [(s.page, s.text) for s in sections] == [
        (1, "第一页：安装 Aurora。\nPage one."),
        (2, "第二页：显存 6 GB。"),
    ]


def test_pdf_pages_without_text_are_skipped_with_ocr_off(write) -> None:
    path = write("mixed.pdf", pdf_bytes([[], ["Only page two has text."]]))
    sections = load_document(path, max_bytes=MAX_BYTES, options=LoadOptions(ocr=False))
    assert [(s.page, s.text) for s in sections] == [(2, "Only page two has text.")]


def test_pdf_encrypted_with_empty_user_password_opens(write) -> None:
    data = pdf_bytes([["Permissions only."]], StandardEncryption("", ownerPassword="owner"))
    assert load(write("perm.pdf", data)) == [Section("Permissions only.", page=1)]


def test_docx_headings_and_table(write) -> None:
    sections = load(write("manual.docx", docx_bytes()))
    assert sections == [
        Section("本手册介绍 Aurora 内部知识库的部署。", heading="Aurora 运维手册"),
        Section("运行 aurora install --offline 完成安装。", heading="Aurora 运维手册 > 安装"),
        TableSection(
            "模式: FP16; 显存: 13 GB\n模式: INT4; 显存: 6 GB",
            heading="Aurora 运维手册 > 安装 > 硬件要求",
        ),
        Section("Ask questions with aurora ask.", heading="Aurora 运维手册 > Usage"),
    ]


def test_xlsx_one_section_per_sheet(write) -> None:
    sections = load(write("specs.xlsx", xlsx_bytes()))
    assert sections == [
        TableSection(
            "型号: Aurora-S; 显存(GB): 6; 发布日期: 2024-03-01\n型号: Aurora-L; 显存(GB): 13.5",
            heading="规格",
        ),
        TableSection("版本: 社区版; 价格: 0", heading="价格"),
    ]


def test_csv_gbk_with_quoted_newline(write) -> None:
    text = '型号,显存,说明\nAurora-S,6 GB,"入门型号\n适合笔记本"\nAurora-L,13 GB,\n'
    rows = "型号: Aurora-S; 显存: 6 GB; 说明: 入门型号 适合笔记本\n型号: Aurora-L; 显存: 13 GB"
    assert load(write("specs.csv", text, "gbk")) == [TableSection(rows)]


def test_csv_gb18030_semicolon_and_tab_delimiters(write) -> None:
    semicolon = "名称;版本;价格\n社区版;2.1;0\n企业版;2.1;999\n"
    expected = "名称: 社区版; 版本: 2.1; 价格: 0\n名称: 企业版; 版本: 2.1; 价格: 999"
    assert load(write("a.csv", semicolon, "gb18030"))[0].text == expected
    assert load(write("b.csv", semicolon.replace(";", "\t")))[0].text == expected


def test_json_key_paths(write) -> None:
    config = {
        "name": "aurora",
        "version": "2.1.0",
        "llm": {"backend": "chatglm2", "quantize": "int4", "gpus": [0, 1], "stream": True},
        "plugins": [{"name": "ocr", "enabled": False}],
    }
    sections = load(write("config.json", json.dumps(config, ensure_ascii=False)))
    assert sections == [
        Section("name: aurora\nversion: 2.1.0"),
        Section(
            "llm.backend: chatglm2\nllm.quantize: int4\nllm.gpus: 0, 1\nllm.stream: true",
            heading="llm",
        ),
        Section("plugins[0].name: ocr\nplugins[0].enabled: false", heading="plugins"),
    ]


def test_json_list_of_records_is_tabular(write) -> None:
    records = [{"q": "显存多少？", "a": "6 GB"}, {"q": "版本", "a": {"major": 2}}]
    sections = load(write("faq.json", json.dumps(records, ensure_ascii=False)))
    assert sections == [TableSection("q: 显存多少？; a: 6 GB\nq: 版本; a.major: 2")]


def test_jsonl_one_record_per_line(write) -> None:
    text = '{"id": 1, "text": "第一条\\n记录"}\n\n{"id": 2, "tags": ["a", "b"]}\n'
    rows = "id: 1; text: 第一条 记录\nid: 2; tags: a, b"
    assert load(write("r.jsonl", text)) == [TableSection(rows)]


def test_markdown_pipe_table_rows_keep_headers(write) -> None:
    text = (
        "# 规格\n说明。\n\n"
        "| 版本 | 显存 | 备注 |\n|:---|---:|---|\n"
        "| **INT4** | 6 GB | a \\| b |\n| FP16 | 13 GB | |\n\n"
        "之后的段落。\n"
    )
    rows = "版本: INT4; 显存: 6 GB; 备注: a | b\n版本: FP16; 显存: 13 GB"
    assert load(write("t.md", text)) == [
        Section("说明。", heading="规格"),
        TableSection(rows, heading="规格"),
        Section("之后的段落。", heading="规格"),
    ]


def test_pdf_line_wraps_inside_chinese_are_joined(write) -> None:
    data = pdf_bytes([["INT4 量化后显存需求", "约 6 GB，适合单卡部署。", "Second line stays."]])
    expected = "INT4 量化后显存需求约 6 GB，适合单卡部署。\nSecond line stays."
    assert load(write("wrap.pdf", data))[0].text == expected
