"""English words for the Chinese words of questions about software documentation.

Chinese users ask in Chinese about READMEs written in English, and about Chinese READMEs whose
tables and options are in English ("Accuracy", "CEval (val)", "--install-completion"). The
bundled embedding model reads no Chinese, so "准确率" finds nothing in "Accuracy: 28.05". This
small glossary, written for kbqa, maps the words such questions use to the English words the
documents use; evidence (kbqa.evidence) counts a match of one of them as a weaker match of the
Chinese word (ALIAS_SHARE). English entries are matched as kbqa.evidence matches words: whole,
lower case, crude stems ("installing" ~ "install").
"""

from __future__ import annotations

GLOSSARY: dict[str, tuple[str, ...]] = {
    # measures and results
    "准确率": ("accuracy",),
    "精度": ("precision", "accuracy"),
    "得分": ("score",),
    "分数": ("score",),
    "评测": ("evaluation", "benchmark"),
    "基准": ("benchmark",),
    "验证集": ("val", "validation"),
    "测试集": ("test",),
    "速度": ("speed",),
    "吞吐": ("throughput",),
    "延迟": ("latency",),
    "显存": ("memory", "vram"),
    "内存": ("memory", "ram"),
    "长度": ("length",),
    "上下文": ("context",),
    # models and training
    "模型": ("model",),
    "推理": ("inference",),
    "训练": ("train", "training"),
    "微调": ("finetune", "finetuning", "fine-tuning"),
    "量化": ("quantization", "quantize"),
    "参数": ("parameter", "parameters", "argument", "option"),
    "参数量": ("parameter", "parameters"),
    "数据集": ("dataset", "datasets"),
    "对话": ("chat",),
    "分词": ("tokenizer", "tokenize", "segmentation", "cut"),
    "词表": ("vocabulary", "vocab"),
    # software
    "安装": ("install", "installation"),
    "依赖": ("dependency", "dependencies", "requires", "requirements"),
    "依赖库": ("dependency", "dependencies"),
    "补全": ("completion",),
    "命令": ("command",),
    "命令行": ("cli", "command"),
    "默认": ("default",),
    "版本": ("version",),
    "文件": ("file",),
    "目录": ("directory", "folder"),
    "配置": ("config", "configuration"),
    "支持": ("support", "supports"),
    "下载": ("download",),
    "发布": ("release", "released"),
    "许可": ("license",),
    "协议": ("license", "protocol"),
    "作者": ("author",),
    "并行": ("parallel",),
    "多进程": ("multiprocessing", "processes"),
    "线程": ("thread", "threads"),
    "端口": ("port",),
    "日志": ("log", "logging"),
    "界面": ("interface", "ui", "webui"),
    "浏览器": ("browser", "web"),
    "判断": ("detect", "determine"),
    "检测": ("detect", "detection"),
    "加密": ("encrypt", "encryption"),
    "解密": ("decrypt", "decryption"),
    "密码": ("password",),
    "用户": ("user",),
    "选项": ("option", "options"),
    "用法": ("usage",),
    "移除": ("remove", "removed"),
    "删除": ("delete", "remove"),
    "附加": ("supplementary", "additional", "append"),
    "追加": ("append",),
    "覆盖": ("overwrite", "override"),
    "保留": ("keep", "preserve"),
    "启用": ("enable",),
    "禁用": ("disable",),
    "登录": ("login", "logins"),
    "失败": ("failure", "failures", "failed", "fail"),
    "账号": ("account", "accounts"),
    "账户": ("account", "accounts"),
    "锁定": ("lock", "locked"),
    "过期": ("expire", "expiration", "expiry"),
    "秒": ("second", "seconds", "sec", "secs"),
    "字节": ("byte", "bytes"),
    "平均": ("average",),
    "权重": ("weight", "weights"),
    "规则": ("rule", "rules"),
    "匹配": ("match", "matching"),
    "扩展名": ("extension", "extensions"),
    "数据库": ("database",),
    "缓存": ("cache",),
    "中断": ("interrupt", "interrupted"),
    "退出": ("exit",),
    "超时": ("timeout",),
    "代理": ("proxy",),
    "英文": ("english",),
    "中文": ("chinese",),
    "数学": ("math",),
}


def english_for(term: str) -> tuple[str, ...]:
    """The English words for a Chinese `term` (folded), or () when it has no entry."""
    return GLOSSARY.get(term, ())
